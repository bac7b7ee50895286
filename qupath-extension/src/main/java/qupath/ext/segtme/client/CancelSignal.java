package qupath.ext.segtme.client;

import java.util.ArrayList;
import java.util.List;

/**
 * A cancel flag shared between a UI (the Cancel button) and a running job. Cancelling runs the
 * registered actions at once (the client registers "cancel the gRPC call", so the server stops
 * its work for this stream), then the job's call throws {@link java.util.concurrent.CancellationException}.
 */
public final class CancelSignal {

    private final List<Runnable> actions = new ArrayList<>();
    private boolean cancelled;

    /** Request cancellation (idempotent, thread-safe). */
    public void cancel() {
        List<Runnable> toRun;
        synchronized (this) {
            if (cancelled)
                return;
            cancelled = true;
            toRun = new ArrayList<>(actions);
            actions.clear();
        }
        toRun.forEach(Runnable::run);
    }

    public synchronized boolean isCancelled() {
        return cancelled;
    }

    /** Run {@code action} on cancel (at once if already cancelled). Returns a handle that unregisters it. */
    public Runnable onCancel(Runnable action) {
        synchronized (this) {
            if (!cancelled) {
                actions.add(action);
                return () -> {
                    synchronized (CancelSignal.this) {
                        actions.remove(action);
                    }
                };
            }
        }
        action.run();
        return () -> {};
    }
}
