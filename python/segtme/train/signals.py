"""SIGTERM / SIGINT during training: the main process finishes the current optimiser step,
saves the run state and stops; DataLoader workers ignore the signals (the main process shuts
them down)."""

from __future__ import annotations

def worker_ignores_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to the main process, which finishes the step,
    saves the state and then shuts the workers down."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def install_stop_handlers(trainer):
    """SIGTERM/SIGINT -> ``trainer.request_stop`` (main thread only); returns a restore function."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, _frame):
        trainer.request_stop(signal.Signals(signum).name)

    for s in old:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
