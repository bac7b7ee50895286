package qupath.ext.segtme.client;

import java.util.Objects;
import java.util.UUID;

/**
 * Options of one DetectTME job. Immutable; use {@link #builder()}.
 * Tile size and overlap are working pixels (at the model's MPP); 0 / -1 mean "the model's default".
 */
public final class DetectOptions {

    /** What the nuclei become in QuPath. */
    public enum Output { DETECTIONS, CELLS }

    /** How tiles are encoded on the wire (RAW_RGB is lossless and cheapest on CPU; PNG is lossless and ~2x smaller). */
    public enum Encoding { RAW_RGB, PNG, JPEG }

    private final String model;
    private final Output output;
    private final String narrativeBackend;
    private final int tileSize;
    private final int overlap;
    private final boolean perTileResults;
    private final Encoding encoding;
    private final String jobId;

    private DetectOptions(Builder b) {
        this.model = b.model;
        this.output = b.output;
        this.narrativeBackend = b.narrativeBackend;
        this.tileSize = b.tileSize;
        this.overlap = b.overlap;
        this.perTileResults = b.perTileResults;
        this.encoding = b.encoding;
        this.jobId = b.jobId == null ? UUID.randomUUID().toString() : b.jobId;
    }

    public static Builder builder() {
        return new Builder();
    }

    public Builder toBuilder() {
        return new Builder().model(model).output(output).narrativeBackend(narrativeBackend).tileSize(tileSize)
                .overlap(overlap).perTileResults(perTileResults).encoding(encoding).jobId(jobId);
    }

    /** Model name; "" = the server's default model. */
    public String model() { return model; }
    public Output output() { return output; }
    /** "template" (default), "transformers", "openai" or "none" (no narrative). */
    public String narrativeBackend() { return narrativeBackend; }
    /** Tile size in working px; 0 = the model's. */
    public int tileSize() { return tileSize; }
    /** Overlap in working px; -1 = the model's. */
    public int overlap() { return overlap; }
    public boolean perTileResults() { return perTileResults; }
    public Encoding encoding() { return encoding; }
    /** Client-chosen id echoed in the server's logs. */
    public String jobId() { return jobId; }

    @Override
    public String toString() {
        return "DetectOptions[model=" + model + ", output=" + output + ", narrative=" + narrativeBackend
                + ", tile=" + tileSize + ", overlap=" + overlap + ", encoding=" + encoding + ", job=" + jobId + "]";
    }

    public static final class Builder {
        private String model = "";
        private Output output = Output.DETECTIONS;
        private String narrativeBackend = "template";
        private int tileSize = 0;
        private int overlap = -1;
        private boolean perTileResults = true;
        private Encoding encoding = Encoding.RAW_RGB;
        private String jobId;

        public Builder model(String model) { this.model = model == null ? "" : model.strip(); return this; }
        public Builder output(Output output) { this.output = Objects.requireNonNull(output); return this; }
        public Builder narrativeBackend(String backend) { this.narrativeBackend = backend == null || backend.isBlank() ? "template" : backend.strip(); return this; }
        /** Convenience: narrative on ("template") or off ("none"). */
        public Builder narrative(boolean on) { return narrativeBackend(on ? "template" : "none"); }
        public Builder tileSize(int tileSize) {
            if (tileSize < 0) throw new IllegalArgumentException("tile size must be >= 0 (0 = model default)");
            this.tileSize = tileSize; return this;
        }
        public Builder overlap(int overlap) {
            if (overlap < -1) throw new IllegalArgumentException("overlap must be >= -1 (-1 = model default)");
            this.overlap = overlap; return this;
        }
        public Builder perTileResults(boolean perTile) { this.perTileResults = perTile; return this; }
        public Builder encoding(Encoding encoding) { this.encoding = Objects.requireNonNull(encoding); return this; }
        public Builder jobId(String jobId) { this.jobId = jobId; return this; }
        public DetectOptions build() { return new DetectOptions(this); }
    }
}
