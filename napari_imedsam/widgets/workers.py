"""Worker bookkeeping and notifications for the dock widgets.

Every slow call runs in a ``napari.qt.threading`` worker with a napari progress bar; results and errors
come back on the GUI thread, and napari registers each worker as a task of the viewer (its cancel entry
quits the worker when the window closes). One ``WorkerTracker`` per viewer (see ``services.py``) runs the
jobs of both widgets, so that tests and scripts can wait until the viewer is idle, and ``Notifier`` sends
napari notifications and keeps a log of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import QCoreApplication, QThread, QThreadPool, QTimer


class Notifier:
    """napari notifications (``show_info`` / ``show_warning`` / ``show_error``) plus a ``log`` of
    (level, message) so that the widget's messages can be inspected."""

    def __init__(self, prefix: str = "I-MedSAM: "):
        self.prefix = prefix
        self.log: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.log.append(("info", message))
        notifications.show_info(self.prefix + message)

    def warning(self, message: str) -> None:
        self.log.append(("warning", message))
        notifications.show_warning(self.prefix + message)

    def error(self, message: str) -> None:
        self.log.append(("error", message))
        notifications.show_error(self.prefix + message)

    def messages(self, level: str | None = None) -> list[str]:
        return [m for lv, m in self.log if level is None or lv == level]


def _always() -> bool:
    return True


class WorkerTracker:
    """Starts workers, connects their callbacks, and knows when none is running.

    Workers run in a thread pool of their own, not Qt's global one: Qt uses the global pool for its own
    short jobs (multi-threaded image conversion, e.g. when napari animates its activity indicator) while
    the GUI thread waits, holding the GIL; workers waiting for the GIL in that pool would deadlock it.

    Each job may name an ``alive`` check (its widget's): once it says False, the job's late results are
    ignored, and :meth:`quit_all` with that check quits only that widget's jobs."""

    #: How long quitting the application waits for the running workers (a model still loading, a fine-tune
    #: run saving its adapters) before Python shuts down under them.
    DRAIN_MS = 60_000

    def __init__(self, notifier: Notifier):
        self.pool = QThreadPool()
        self.pool.setMaxThreadCount(max(2, QThread.idealThreadCount()))
        self.notifier = notifier
        self.running: dict = {}  # worker -> the alive check of the widget that started it
        self.timers: list[QTimer] = []  # debounce timers that count as pending work
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.drain)

    def drain(self, msecs: int | None = None) -> bool:
        """Ask every running worker to stop and wait (up to ``msecs``, default ``DRAIN_MS``) until none runs;
        True when all finished. Runs when the application quits: a worker still running while Python shuts
        down (closing napari while the model loads) fails inside its thread, and Qt aborts the process."""
        self.quit_all()
        return self.pool.waitForDone(self.DRAIN_MS if msecs is None else msecs)

    def start(self, func: Callable[..., Any], *args: Any, desc: str = "", total: int = 0,
              on_return: Callable[[Any], None] | None = None,
              on_yield: Callable[[Any], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None,
              on_finish: Callable[[], None] | None = None, progress: bool = True,
              alive: Callable[[], bool] = _always):
        """Run ``func(*args)`` (a function or a generator) in a worker thread; callbacks run on the GUI
        thread while ``alive()``. Errors go to ``on_error`` or become an error notification naming ``desc``."""
        kwargs = {"_progress": {"desc": desc, "total": total}} if progress else {}
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)

        def guard(callback):
            if callback is None:
                return None
            return lambda *a: callback(*a) if alive() else None

        on_return, on_yield, on_error, on_finish = (guard(c) for c in (on_return, on_yield, on_error, on_finish))
        if on_return is not None:
            worker.returned.connect(on_return)
        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(on_yield)

        def failed(exc: BaseException) -> None:
            if on_error is not None:
                on_error(exc)
            elif alive():
                self.notifier.error(f"{desc or 'Background task'} failed: {type(exc).__name__}: {exc}")

        worker.errored.connect(failed)

        def finished() -> None:
            self.running.pop(worker, None)
            if on_finish is not None:
                on_finish()

        worker.finished.connect(finished)
        self.running[worker] = alive  # also keeps the worker alive until it finishes
        self.pool.start(worker)
        return worker

    def watch_timer(self, timer: QTimer) -> QTimer:
        """Count ``timer`` (a debounce timer) as pending work while it is active."""
        self.timers.append(timer)
        return timer

    def forget_timers(self, timers) -> None:
        gone = {id(t) for t in timers}
        self.timers = [t for t in self.timers if id(t) not in gone]

    def _timer_active(self, timer: QTimer) -> bool:
        try:
            return timer.isActive()
        except RuntimeError:  # the timer's owner was deleted
            self.timers = [t for t in self.timers if t is not timer]
            return False

    def is_idle(self) -> bool:
        if self.running:
            return False
        return not any([self._timer_active(t) for t in list(self.timers)])

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Process Qt events until no worker runs and no debounce timer is pending (True), or until
        ``timeout`` seconds pass (False)."""
        app = QCoreApplication.instance()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if app is not None:
                app.processEvents()
            if self.is_idle():
                if app is not None:
                    app.processEvents()  # deliver the last finished/returned signals
                if self.is_idle():
                    return True
            time.sleep(0.005)
        return False

    def quit_all(self, alive: Callable[[], bool] | None = None) -> None:
        """Ask the running workers (only those started with ``alive``, if given) to stop."""
        for worker, owner in list(self.running.items()):
            if alive is None or owner == alive:
                worker.quit()
