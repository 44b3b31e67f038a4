"""Starting the widgets' workers without garbage-collection freezes on the GUI thread.

A full (generation 2) collection walks every object Python's collector tracks: with napari,
Qt and torch loaded, 160–340 ms holding the GIL, which the user feels as a frozen viewer.
A run's own allocations trigger such collections (measured in the training widget: one
225–230 ms collection 0.7 s into every 60 s run, while the optimiser's first use imported
``torch._dynamo`` and sympy), and a run's setup is when most objects are created. So, while
any widget's worker runs:

- at its start the collector is paused and every object alive is frozen (``gc.freeze()``:
  moved to the permanent generation, which collections skip);
- at its first result (its model, queue and threads exist by then), or after
  :data:`SETUP_SECONDS` at most, what was created is frozen too and the collector resumes:
  the collections the run triggers from then on only walk the objects it makes per step;
- when the last running worker finishes, errors or is quit, the objects stay frozen (the
  collector keeps running on what is not frozen) and the full collection waits for the user
  to pause: once no run is left and no input event (mouse, key, wheel, touch) has reached
  the application for :data:`IDLE_SECONDS` (nor a mouse button been held down),
  ``gc.unfreeze()`` hands the frozen objects back to the oldest generation and the collector
  runs once, on the GUI thread, from the event loop. It frees what became garbage while
  frozen (a dock closed mid-run: left to a later automatic collection, its Qt widgets were
  collected inside napari's teardown, where PyQt crashed,
  tests/widgets/test_sampler_explorer_worker.py). It cannot be made shorter (CPython 3.11
  walks every tracked object in one go, 280–460 ms here) nor skipped (the unfrozen objects
  would make the next automatic full collection due soon after), so it is moved to where
  nobody is touching the viewer, not into the last frame of a run. A run starting before
  then keeps everything frozen and the collection waits for its end; a program that exits
  before the pause collects at exit (``atexit``, the application still intact), after
  quitting the workers still running and waiting up to :data:`EXIT_WAIT_SECONDS` for them
  (one still running at exit emitted ``finished`` on deleted Qt objects and PyQt aborted
  the process). A program
  that calls ``gc.freeze()`` itself sees that undone then, and one that disabled the
  collector keeps it disabled;
- superqt emits no ``finished`` when the work ends in a ``RuntimeError`` (it takes it for a
  deleted Qt object) or a ``BaseException``: then the hold is released in the worker's thread
  as its work ends, and the GUI thread's idle check collects as above.
"""

from __future__ import annotations

import atexit
import gc
import threading
import time
import weakref
from typing import Any

SETUP_SECONDS = 5.0  # the collector resumes at a run's first result, or this long after its start
IDLE_SECONDS = 1.0  # no input event this long after the last run: the full collection runs
IDLE_POLL_MS = 200  # how often the GUI thread checks for that
EXIT_WAIT_SECONDS = 10.0  # at exit, the longest wait for the quit workers to end


class _CollectorHold:
    """Process-wide counts of running and setting-up workers (one per process, like gc).

    ``start``, ``settle``, ``finish`` and ``release`` run on the GUI thread, ``finish`` also on
    a worker's thread when superqt will not emit ``finished``; a lock keeps the counts and
    the collector's state consistent between them.
    """

    lock = threading.Lock()
    running = 0
    setting_up = 0
    was_enabled = True

    @classmethod
    def start(cls) -> None:
        with cls.lock:
            if cls.running == 0:
                cls.was_enabled = gc.isenabled()
            gc.freeze()
            gc.disable()
            cls.running += 1
            cls.setting_up += 1

    @classmethod
    def settle(cls) -> None:
        with cls.lock:
            cls.setting_up -= 1
            if cls.running:
                gc.freeze()
            if cls.setting_up == 0 and cls.was_enabled:
                gc.enable()

    @classmethod
    def finish(cls) -> None:
        with cls.lock:
            cls.running -= 1

    @classmethod
    def idle(cls) -> bool:
        with cls.lock:
            return cls.running == 0

    @classmethod
    def release(cls) -> bool:
        """Unfreeze and collect once (GUI thread) if no run holds the collector; whether it did."""
        with cls.lock:
            if cls.running:
                return False
            gc.unfreeze()
        gc.collect()
        return True


class _IdleCollection:
    """The GUI thread's wait for a pause in the user's input before the full collection.

    A timer polls every :data:`IDLE_POLL_MS` from the first run's start; once no run is left,
    an application-wide event filter (installed only then, so runs never pay for it) notes
    each input event, and :data:`IDLE_SECONDS` after the last one ``_CollectorHold.release``
    runs and the timer stops.
    """

    def __init__(self) -> None:
        from qtpy.QtCore import QEvent, QObject, QTimer
        from qtpy.QtWidgets import QApplication

        kinds = QEvent.Type
        inputs = frozenset(
            getattr(kinds, name)
            for name in (
                "MouseButtonPress",
                "MouseButtonRelease",
                "MouseButtonDblClick",
                "MouseMove",
                "HoverMove",
                "Wheel",
                "KeyPress",
                "KeyRelease",
                "TouchBegin",
                "TouchUpdate",
                "TabletPress",
                "TabletMove",
            )
        )
        press, release = kinds.MouseButtonPress, kinds.MouseButtonRelease
        watch = self

        class InputFilter(QObject):
            def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 (Qt's name)
                kind = event.type()
                if kind in inputs:
                    watch.last_input = time.perf_counter()
                    if kind == press:  # a button held still (a paused stroke) is not a pause
                        watch.button_down = True
                    elif kind == release:
                        watch.button_down = False
                return False

        app = QApplication.instance()
        if app is None:
            raise RuntimeError("start_worker needs a running QApplication")
        self.app = app
        self.filter = InputFilter(self.app)
        self.timer = QTimer(self.app)
        self.timer.setInterval(IDLE_POLL_MS)
        self.timer.timeout.connect(lambda: self.tick())
        self.filtering = self.waiting = self.button_down = False
        self.last_input = time.perf_counter()
        # a program that ends before the pause: collect while the application is intact
        # (left frozen, a closed dock's Qt widgets crashed the interpreter's exit)
        atexit.register(self.at_exit)

    def at_exit(self) -> None:
        # A worker still running when the interpreter exits (a script that closed the viewer
        # mid-run and ended) emits its `finished` on Qt objects the exit has deleted: PyQt
        # aborts the process. Quit ours (the widgets quit theirs at close) and wait for them.
        from qtpy.QtCore import QThreadPool

        for worker in list(_started):
            try:
                worker.quit()
            except RuntimeError:  # its Qt objects are gone already
                pass

        pool = QThreadPool.globalInstance()
        try:
            if pool is not None:
                pool.waitForDone(int(1000 * EXIT_WAIT_SECONDS))
        except RuntimeError:  # the application's Qt objects are gone already
            pass
        self.collect_now()

    def collect_now(self) -> None:
        """The waiting collection, now (at exit; tests, between two tests)."""
        if not self.waiting:
            return
        try:
            self.timer.stop()
            self.stop_filtering()
        except RuntimeError:  # the application's Qt objects are gone already
            pass
        self.waiting = not _CollectorHold.release()

    def watch(self) -> None:
        """A run starts (GUI thread): poll until the collection after it has run."""
        self.stop_filtering()
        self.waiting = True
        self.timer.start()

    def tick(self) -> None:
        if not _CollectorHold.idle():
            self.stop_filtering()
        elif not self.filtering:
            self.app.installEventFilter(self.filter)
            self.filtering = True
            self.last_input = time.perf_counter()  # idle from the end of the last run
        elif self.button_down:
            self.last_input = time.perf_counter()
        elif time.perf_counter() - self.last_input >= IDLE_SECONDS:
            self.stop_filtering()
            if _CollectorHold.release():
                self.waiting = False
                self.timer.stop()

    def stop_filtering(self) -> None:
        if self.filtering:
            self.filtering = self.button_down = False
            self.app.removeEventFilter(self.filter)

    @property
    def pending(self) -> bool:
        """Whether a collection is still to come."""
        return self.waiting


_idle_collection: _IdleCollection | None = None
_started: weakref.WeakSet[Any] = weakref.WeakSet()  # workers started here: quit at exit


def idle_collection() -> _IdleCollection:
    """The process's one idle collection, made on the GUI thread at the first run."""
    global _idle_collection
    from qtpy.QtWidgets import QApplication

    old = _idle_collection
    if old is not None and old.app is QApplication.instance():
        return old
    new = _idle_collection = _IdleCollection()
    if old is not None:  # the application was replaced (tests): the new one takes over
        atexit.unregister(old.at_exit)
        if old.waiting:
            new.watch()
    return new


class _WorkerHold:
    """One worker's share of the hold: settled and finished once each, whichever comes first."""

    def __init__(self, worker: Any) -> None:
        self.worker, self.work = worker, worker.work
        self.settled = self.finished = False
        self.guard = threading.Lock()  # taken before _CollectorHold.lock, never after

    def settle(self, *_: Any) -> None:
        with self.guard:
            if not (self.settled or self.finished):
                self.settled = True
                _CollectorHold.settle()

    def finish(self) -> None:
        with self.guard:
            if self.finished:
                return
            self.finished = True
            if not self.settled:
                self.settled = True
                _CollectorHold.settle()
            _CollectorHold.finish()

    def on_finished(self, *_: Any) -> None:
        """``finished`` (GUI thread): release (the collection waits for the user's pause)."""
        self.finish()

    def held_work(self) -> Any:
        """The worker's ``work``, releasing the hold where superqt emits no ``finished``."""
        try:
            result = self.work()
        except Exception:  # superqt reports it: `errored`, then `finished`
            raise
        except BaseException:  # not caught by superqt: no `finished` follows
            self.finish()
            raise
        finally:
            self.unwrap()
        if isinstance(result, RuntimeError):  # superqt returns without `finished`
            self.finish()
        return result

    def unwrap(self) -> None:
        """Drop ``held_work`` from the worker (no cycle worker → hold → worker left)."""
        if "work" in vars(self.worker):
            del self.worker.work


def start_worker(worker: Any) -> None:
    """Start a widget's worker (a superqt/napari worker) with collections held off as above.

    The hold is released at ``finished``, or in the worker's thread when its work ends in a
    way superqt emits no ``finished`` for; if ``worker.start()`` raises, it is released
    before the error propagates. The full collection follows at the user's next pause.
    """
    from qtpy.QtCore import QTimer

    hold = _WorkerHold(worker)
    _started.add(worker)
    idle_collection().watch()
    _CollectorHold.start()
    try:
        worker.work = hold.held_work
        # lambdas, not bound methods: Qt bindings may hold a bound method's object weakly,
        # and nothing else keeps `hold` alive once the work has ended
        if hasattr(worker, "yielded"):
            worker.yielded.connect(lambda *_: hold.settle())
        worker.finished.connect(lambda *_: hold.on_finished())
        QTimer.singleShot(int(1000 * SETUP_SECONDS), lambda: hold.settle())
        worker.start()
    except BaseException:
        hold.unwrap()
        hold.finish()
        raise
