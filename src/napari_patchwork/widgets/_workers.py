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
- when the last running worker finishes, errors or is quit (its ``finished`` signal, on the
  GUI thread), ``gc.unfreeze()`` hands the frozen objects back to the oldest generation and
  the collector runs once: one full collection, at the end of the run, not during it, which
  frees what became garbage while frozen (a dock closed mid-run: left to a later collection,
  its Qt widgets were collected inside napari's teardown, where PyQt crashed,
  tests/widgets/test_sampler_explorer_worker.py). Skipping it only defers it: the unfrozen
  objects make the collector's next automatic full collection due soon after. A program that
  calls ``gc.freeze()`` itself sees that undone then, and one that disabled the collector
  keeps it disabled;
- superqt emits no ``finished`` when the work ends in a ``RuntimeError`` (it takes it for a
  deleted Qt object) or a ``BaseException``: then the hold is released in the worker's thread
  as its work ends, without the collection.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

SETUP_SECONDS = 5.0  # the collector resumes at a run's first result, or this long after its start


class _CollectorHold:
    """Process-wide counts of running and setting-up workers (one per process, like gc).

    ``start``, ``settle``, ``finish`` and ``collect`` run on the GUI thread, ``finish`` also on
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
            if cls.running == 0:
                gc.unfreeze()

    @classmethod
    def collect(cls) -> None:
        """One full collection on the GUI thread, once no run holds the collector."""
        with cls.lock:
            idle = cls.running == 0
        if idle:
            gc.collect()


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
        """``finished`` (GUI thread): release, then one collection if no run is left."""
        self.finish()
        _CollectorHold.collect()

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

    The hold is released at ``finished`` (then one collection), or in the worker's thread when
    its work ends in a way superqt emits no ``finished`` for; if ``worker.start()`` raises,
    it is released before the error propagates.
    """
    from qtpy.QtCore import QTimer

    hold = _WorkerHold(worker)
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
