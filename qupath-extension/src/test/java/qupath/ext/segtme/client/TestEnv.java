package qupath.ext.segtme.client;

import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Assumptions;

import java.nio.file.Files;
import java.nio.file.Path;

/** Paths shared by the tests: the repository, the shared data, the server command. */
final class TestEnv {

    private TestEnv() {}

    /** Repository root: $SEGTME_REPO (set by scripts/java_test.sh) or found by walking up to proto/. */
    static Path repo() {
        String env = System.getenv("SEGTME_REPO");
        if (env != null && !env.isBlank())
            return Path.of(env).toAbsolutePath().normalize();
        Path p = Path.of("").toAbsolutePath();
        while (p != null && !Files.isRegularFile(p.resolve("proto/segtme/v1/segtme.proto")))
            p = p.getParent();
        if (p == null)
            throw new IllegalStateException("cannot find the repository root (set SEGTME_REPO)");
        return p;
    }

    static boolean isCI() {
        return "true".equalsIgnoreCase(System.getenv("CI"));
    }

    /** $SEGTME_DATA_DIR, default &lt;repo&gt;/../shared/data (the same rule as tests/conftest.py). */
    static Path dataDir() {
        String env = System.getenv("SEGTME_DATA_DIR");
        Path p = env != null && !env.isBlank() ? Path.of(env) : repo().getParent().resolve("shared").resolve("data");
        return p.toAbsolutePath().normalize();
    }

    /** Skip locally, but fail under CI=true, when a required resource is missing. */
    static void require(boolean present, String what) {
        if (present)
            return;
        String msg = what + " (set SEGTME_DATA_DIR / SEGTME_CMD)";
        if (isCI())
            Assertions.fail(msg + " — CI must not skip data tests");
        Assumptions.abort(msg);
    }

    /** The server command: $SEGTME_CMD (split on spaces) or -Dsegtme.cmd, default &lt;repo&gt;/.venv/bin/segtme. */
    static String[] serverCommand() {
        String cmd = System.getProperty("segtme.cmd", System.getenv("SEGTME_CMD"));
        if (cmd == null || cmd.isBlank())
            cmd = repo().resolve(".venv/bin/segtme").toString();
        return cmd.strip().split("\\s+");
    }
}
