package qupath.ext.segtme.client;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Objects;

/**
 * How to reach a SegTME server. Immutable; use {@link #builder(String)}.
 * <ul>
 * <li>target: "host:port" (e.g. "localhost:50051")</li>
 * <li>TLS: off by default; with TLS on, {@code trustCertificate} (PEM) pins a self-signed server
 * certificate, otherwise the JVM's trusted roots are used</li>
 * <li>bearer token: sent as {@code authorization: Bearer <token>} on every call</li>
 * <li>connect retries: UNAVAILABLE before a stream has produced anything is retried
 * {@code connectAttempts} times with exponential backoff from {@code initialBackoff} up to {@code maxBackoff}</li>
 * <li>deadlines: {@code callTimeout} for GetInfo/ListModels, {@code jobTimeout} for one whole DetectTME job</li>
 * </ul>
 */
public final class ClientConfig {

    private final String target;
    private final boolean tls;
    private final Path trustCertificate;
    private final String bearerToken;
    private final int connectAttempts;
    private final Duration initialBackoff;
    private final Duration maxBackoff;
    private final Duration callTimeout;
    private final Duration jobTimeout;
    private final int maxInboundMessageBytes;

    private ClientConfig(Builder b) {
        this.target = b.target;
        this.tls = b.tls;
        this.trustCertificate = b.trustCertificate;
        this.bearerToken = b.bearerToken;
        this.connectAttempts = b.connectAttempts;
        this.initialBackoff = b.initialBackoff;
        this.maxBackoff = b.maxBackoff;
        this.callTimeout = b.callTimeout;
        this.jobTimeout = b.jobTimeout;
        this.maxInboundMessageBytes = b.maxInboundMessageBytes;
    }

    public static Builder builder(String target) {
        return new Builder(target);
    }

    public String target() { return target; }
    public boolean tls() { return tls; }
    public Path trustCertificate() { return trustCertificate; }
    public String bearerToken() { return bearerToken; }
    public int connectAttempts() { return connectAttempts; }
    public Duration initialBackoff() { return initialBackoff; }
    public Duration maxBackoff() { return maxBackoff; }
    public Duration callTimeout() { return callTimeout; }
    public Duration jobTimeout() { return jobTimeout; }
    public int maxInboundMessageBytes() { return maxInboundMessageBytes; }

    /** Backoff before retry number {@code attempt} (1-based): initial * 2^(attempt-1), capped. */
    public Duration backoff(int attempt) {
        long ms = initialBackoff.toMillis() << Math.min(20, Math.max(0, attempt - 1));
        return Duration.ofMillis(Math.min(ms, maxBackoff.toMillis()));
    }

    public static final class Builder {
        private final String target;
        private boolean tls;
        private Path trustCertificate;
        private String bearerToken;
        private int connectAttempts = 5;
        private Duration initialBackoff = Duration.ofMillis(250);
        private Duration maxBackoff = Duration.ofSeconds(8);
        private Duration callTimeout = Duration.ofSeconds(30);
        private Duration jobTimeout = Duration.ofHours(2);
        private int maxInboundMessageBytes = 256 * 1024 * 1024;

        private Builder(String target) {
            Objects.requireNonNull(target, "target");
            if (target.isBlank())
                throw new IllegalArgumentException("server address is empty (expected host:port)");
            this.target = target.strip();
        }

        public Builder tls(boolean tls) { this.tls = tls; return this; }
        public Builder trustCertificate(Path pem) { this.trustCertificate = pem; if (pem != null) this.tls = true; return this; }
        public Builder bearerToken(String token) { this.bearerToken = token == null || token.isBlank() ? null : token.strip(); return this; }
        public Builder connectAttempts(int n) {
            if (n < 1) throw new IllegalArgumentException("connectAttempts must be >= 1");
            this.connectAttempts = n; return this;
        }
        public Builder initialBackoff(Duration d) { this.initialBackoff = positive(d, "initialBackoff"); return this; }
        public Builder maxBackoff(Duration d) { this.maxBackoff = positive(d, "maxBackoff"); return this; }
        public Builder callTimeout(Duration d) { this.callTimeout = positive(d, "callTimeout"); return this; }
        public Builder jobTimeout(Duration d) { this.jobTimeout = positive(d, "jobTimeout"); return this; }
        public Builder maxInboundMessageBytes(int n) { this.maxInboundMessageBytes = n; return this; }
        public ClientConfig build() { return new ClientConfig(this); }

        private static Duration positive(Duration d, String name) {
            if (d == null || d.isNegative() || d.isZero())
                throw new IllegalArgumentException(name + " must be positive");
            return d;
        }
    }
}
