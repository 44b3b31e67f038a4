"""Starting the widgets' workers without garbage-collection freezes on the GUI thread.

A full (generation 2) collection walks every object Python's collector tracks: with napari,
Qt and torch loaded, 160–230 ms holding the GIL, which the user feels as a frozen viewer.
A run's own allocations trigger such collections (measured in the training widget: one
225–230 ms collection 0.7 s into every 60 s run, while the optimiser's first use imported
``torch._dynamo`` and sympy), and a run's setup is when most objects are created. So, while
any widget's worker runs:

- at its start the collector is paused and every object alive is frozen (``gc.freeze()``:
  moved to the permanent generation, which collections skip);
- at its first result (its model, queue and threads exist by then), or after
  :data:`SETUP_SECONDS` at most, what was created is frozen too and the collector resumes:
  the collections the run triggers from then on only walk the objects it makes per step;
- when the last running worker's work ends (it finishes, errors or is quit),
  ``gc.unfreeze()`` hands the frozen objects back to the oldest generation: cycles among them
  are freed by the collector's next full collection, as napari's own are. A program that
  calls ``gc.freeze()`` itself sees that undone then, and one that disabled the collector
  keeps it disabled;
- if a dock closed while a run held the collector (:func:`note_dock_closed`), its Qt
  widgets are garbage in the frozen set: then, and only then, the collector runs once on
  the GUI thread when that signal arrives (a full collection: about 300 ms with napari,
  Qt and torch loaded, a freeze a user feels at the end of every run if always done).
  Left to a later collection, they were collected inside napari's teardown, where PyQt
  crashed (tests/widgets/test_sampler_explorer_worker.py).
"""

from __future__ import annotations

import gc
import threading
from typing import Any

SETUP_SECONDS = 5.0  # the collector resumes at a run's first result, or this long after its start


class _CollectorHold:
    """Process-wide counts of running and setting-up workers (one per process, like gc).

    ``start`` and ``settle`` run on the GUI thread; ``finish`` runs on the worker's thread
    as its work ends (so a worker whose ``finished`` signal never comes still releases its
    hold), and ``collect`` on the GUI thread after that signal. A lock keeps the counts
    consistent between them.
    """

    lock = threading.Lock()
    running = 0
    setting_up = 0
    was_enabled = True
    dock_closed = False  # a dock closed during a run: collect once the runs have ended

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
            gc.freeze()
            if cls.setting_up == 0 and cls.was_enabled:
                gc.enable()

    @classmethod
    def finish(cls) -> None:
        with cls.lock:
            cls.running -= 1
            if cls.running == 0:
                gc.unfreeze()

    @classmethod
    def collect(cls) -> None:
        """One collection on the GUI thread once no run holds the collector, if a dock
        closed during a run."""
        with cls.lock:
            due = cls.running == 0 and cls.dock_closed
            if due:
                cls.dock_closed = False
        if due:
            # What became garbage while frozen (the closed dock's Qt widgets) is freed here,
            # on the GUI thread, not inside napari's teardown, where PyQt crashed collecting it.
            gc.collect()


def note_dock_closed() -> None:
    """A dock widget closed (called by :class:`~._napari.Lifecycle`): if a run holds the
    collector, collect once when the runs have ended."""
    with _CollectorHold.lock:
        if _CollectorHold.running:
            _CollectorHold.dock_closed = True


def start_worker(worker: Any) -> None:
    """Start a widget's worker (a superqt/napari worker) with collections held off as above.

    The hold is released when the worker's work ends, in its own thread, whatever way it
    ends: superqt does not emit ``finished`` when the work ends in a ``RuntimeError`` (it
    takes it for a deleted Qt object). If ``worker.start()`` itself raises, the hold is
    released before the error propagates.
    """
    from qtpy.QtCore import QTimer

    state = {"settled": False, "finished": False}
    guard = threading.Lock()

    def settle(*_: Any) -> None:
        with guard:
            if state["settled"] or state["finished"]:
                return
            state["settled"] = True
        _CollectorHold.settle()

    def finish() -> None:
        with guard:
            if state["finished"]:
                return
            state["finished"] = True
            settled, state["settled"] = state["settled"], True
        if not settled:
            _CollectorHold.settle()
        _CollectorHold.finish()

    work = worker.work

    def held_work() -> Any:
        try:
            return work()
        finally:
            finish()

    _CollectorHold.start()
    worker.work = held_work
    if hasattr(worker, "yielded"):
        worker.yielded.connect(settle)
    worker.finished.connect(lambda *_: _CollectorHold.collect())
    QTimer.singleShot(int(1000 * SETUP_SECONDS), settle)
    try:
        worker.start()
    except BaseException:
        finish()
        raise
