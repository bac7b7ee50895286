package qupath.ext.segtme.client;

/** Receives progress updates; called from the client's threads, so implementations must be thread-safe and fast. */
@FunctionalInterface
public interface ProgressListener {
    void onProgress(JobProgress progress);
}
