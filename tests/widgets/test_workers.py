"""``start_worker``: the collector hold is released however a worker's run ends.

Real superqt workers on real threads; the checks are the interpreter's own collector state.
"""

import gc
import threading
import time

import pytest
from superqt.utils import GeneratorWorker

from napari_patchwork.widgets import _workers
from napari_patchwork.widgets._workers import start_worker


@pytest.fixture(autouse=True)
def _restore_the_collector(qtbot):
    """Each test starts with the collector released; a failing test must not leave it held
    for the tests after it."""
    qtbot.waitUntil(released, timeout=10_000)
    yield
    hold = _workers._CollectorHold
    if hold.running or hold.setting_up or gc.get_freeze_count() or not gc.isenabled():
        hold.running = hold.setting_up = 0
        gc.unfreeze()
        gc.enable()


def released() -> bool:
    return gc.get_freeze_count() == 0 and gc.isenabled() and _workers._CollectorHold.running == 0


def run_ended() -> bool:
    """No run holds the collector; its objects may still be frozen, awaiting the pause."""
    hold = _workers._CollectorHold
    return gc.isenabled() and hold.running == 0 and hold.setting_up == 0


def steps(event: threading.Event, error: BaseException | None):
    yield 1
    event.wait(10)
    if error is not None:
        raise error
    yield 2


@pytest.fixture
def text_field(qtbot):
    """A shown text field to type into, click and hold the mouse button on."""
    from qtpy.QtWidgets import QLineEdit

    field = QLineEdit()
    qtbot.addWidget(field)
    field.show()
    return field


def start_a_run(qtbot) -> tuple[threading.Event, list[bool]]:
    """A worker past its first result (collecting again, its objects frozen): set the event
    to end it; the list fills when `finished` is emitted."""
    event = threading.Event()
    worker = GeneratorWorker(steps, event, None)
    finished: list[bool] = []
    worker.finished.connect(lambda: finished.append(True))
    start_worker(worker)
    qtbot.waitUntil(lambda: gc.isenabled(), timeout=5_000)
    return event, finished


def end_the_run(qtbot, run: tuple[threading.Event, list[bool]]) -> None:
    """End the run; when `finished` arrives, no run holds the collector any more."""
    event, finished = run
    event.set()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert run_ended()


@pytest.mark.parametrize(
    "error",
    [
        None,
        ValueError("model failed"),
        # superqt warns and returns without `finished` (as it would for a user, whose warnings
        # are not errors)
        pytest.param(
            RuntimeError("bare runtime error"),
            marks=pytest.mark.filterwarnings("ignore:RuntimeError in aborted thread"),
        ),
    ],
    ids=["returns", "raises", "raises RuntimeError (superqt emits no finished)"],
)
def test_the_hold_is_released_when_the_work_ends(qtbot, error):
    assert released()
    event = threading.Event()
    worker = GeneratorWorker(steps, event, error)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    errors = []
    worker.errored.connect(errors.append)
    start_worker(worker)
    assert gc.get_freeze_count() > 0  # frozen from the start of the run
    assert not gc.isenabled()  # paused until its first result
    qtbot.waitUntil(lambda: gc.isenabled(), timeout=5_000)  # first result: collecting again
    assert _workers._CollectorHold.running == 1
    event.set()
    qtbot.waitUntil(released, timeout=10_000)
    if isinstance(error, RuntimeError):
        qtbot.wait(200)
        assert not finished  # superqt's choice: the hold did not wait for this signal
    else:
        qtbot.waitUntil(lambda: bool(finished), timeout=5_000)
        assert [str(e) for e in errors] == ([] if error is None else ["model failed"])


class UnstartableWorker(GeneratorWorker):
    def start(self) -> None:
        raise RuntimeError("no thread available")


def test_a_worker_that_fails_to_start_releases_the_hold(qtbot):
    assert released()
    worker = UnstartableWorker(steps, threading.Event(), None)
    with pytest.raises(RuntimeError, match="no thread available"):
        start_worker(worker)
    assert run_ended()
    qtbot.waitUntil(released, timeout=5_000)  # collected at the pause that follows


def test_two_runs_release_only_when_both_ended(qtbot):
    first, second = threading.Event(), threading.Event()
    workers = [GeneratorWorker(steps, e, None) for e in (first, second)]
    for worker in workers:
        start_worker(worker)
    qtbot.waitUntil(lambda: _workers._CollectorHold.setting_up == 0, timeout=5_000)
    first.set()
    qtbot.waitUntil(lambda: _workers._CollectorHold.running == 1, timeout=10_000)
    assert gc.get_freeze_count() > 0  # the second run still holds its objects frozen
    second.set()
    qtbot.waitUntil(released, timeout=10_000)


def test_the_end_of_the_runs_collects_once_on_the_gui_thread(qtbot):
    """Garbage frozen during a run (a closed dock's Qt widgets) is collected once, on the GUI
    thread, when the last run ends; the worker keeps no reference cycle to its hold."""
    full = []

    def record(phase, info):
        if phase == "start" and info["generation"] == 2:
            full.append(threading.current_thread() is threading.main_thread())

    event = threading.Event()
    worker = GeneratorWorker(steps, event, None)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    start_worker(worker)
    gc.callbacks.append(record)
    try:
        event.set()
        qtbot.waitUntil(lambda: bool(finished) and released(), timeout=10_000)
        qtbot.wait(100)
    finally:
        gc.callbacks.remove(record)
    assert full and all(full)  # a full collection, on the GUI thread
    assert "work" not in vars(worker)  # the wrapper is gone: no worker -> hold -> worker cycle


@pytest.mark.filterwarnings("ignore:RuntimeError in aborted thread")
def test_a_first_result_settling_while_the_work_ends_leaves_nothing_frozen(qtbot, monkeypatch):
    """The GUI thread settles (first result) while the worker's thread releases (a bare
    RuntimeError: no `finished`): whatever the interleaving, nothing stays frozen."""
    settle = _workers._CollectorHold.settle.__func__

    event = threading.Event()

    def slow_settle(cls):
        event.set()  # the work ends now, in the worker's thread, ...
        time.sleep(0.3)  # ... while the GUI thread is still settling
        settle(cls)

    monkeypatch.setattr(_workers._CollectorHold, "settle", classmethod(slow_settle))
    worker = GeneratorWorker(steps, event, RuntimeError("bare runtime error"))
    start_worker(worker)
    qtbot.waitUntil(released, timeout=10_000)
    qtbot.wait(500)
    assert released()


def test_the_collection_waits_until_the_user_pauses(qtbot, text_field):
    """No full collection in the frames that end a run: the objects stay frozen while input
    keeps arriving (here: key presses and mouse moves every 150 ms, for 2.5 s), and are
    handed back and collected once, on the GUI thread, IDLE_SECONDS after the last one."""
    from qtpy.QtCore import QPoint, Qt

    full = []

    def record(phase, info):
        if phase == "start" and info["generation"] == 2:
            full.append(threading.current_thread() is threading.main_thread())

    run = start_a_run(qtbot)
    gc.callbacks.append(record)
    try:
        end_the_run(qtbot, run)
        assert gc.get_freeze_count() > 0  # the end of the run: still frozen
        typing_until = time.perf_counter() + 2.5
        x = 0
        while time.perf_counter() < typing_until:
            qtbot.keyClick(text_field, Qt.Key.Key_A)
            x = (x + 7) % 50
            qtbot.mouseMove(text_field, QPoint(5 + x, 5))
            qtbot.wait(150)
        last_input = time.perf_counter()
        assert gc.get_freeze_count() > 0, "collected while the user was typing"
        assert not full, "a full collection ran while the user was typing"
        qtbot.waitUntil(released, timeout=5_000)
        collected = time.perf_counter()
    finally:
        gc.callbacks.remove(record)
    assert full == [True]  # once, on the GUI thread
    assert collected - last_input >= _workers.IDLE_SECONDS - 0.2
    assert not _workers.idle_collection().pending


def test_a_run_starting_before_the_pause_keeps_the_objects_frozen(qtbot):
    first, second = threading.Event(), threading.Event()
    worker = GeneratorWorker(steps, first, None)
    start_worker(worker)
    first.set()
    qtbot.waitUntil(run_ended, timeout=10_000)
    worker = GeneratorWorker(steps, second, None)  # the next run, before the pause
    start_worker(worker)
    qtbot.wait(int(1000 * (_workers.IDLE_SECONDS + 0.5)))
    assert gc.get_freeze_count() > 0 and _workers._CollectorHold.running == 1
    second.set()
    qtbot.waitUntil(released, timeout=10_000)


def test_a_button_held_still_is_not_a_pause(qtbot, text_field):
    """A stroke paused with the mouse button down (no motion events) keeps the collection
    waiting; it runs IDLE_SECONDS after the release."""
    from qtpy.QtCore import QPoint, Qt

    end_the_run(qtbot, start_a_run(qtbot))
    qtbot.wait(300)  # the filter is installed at the first check after the end
    qtbot.mousePress(text_field, Qt.MouseButton.LeftButton, pos=QPoint(5, 5))
    qtbot.wait(int(1000 * (_workers.IDLE_SECONDS + 1.0)))
    assert gc.get_freeze_count() > 0, "collected while the button was held"
    qtbot.mouseRelease(text_field, Qt.MouseButton.LeftButton, pos=QPoint(5, 5))
    released_at = time.perf_counter()
    qtbot.waitUntil(released, timeout=5_000)
    assert time.perf_counter() - released_at >= _workers.IDLE_SECONDS - 0.2
