"""A GUI-thread heartbeat: the worst freeze a user can feel, shared by the widget benchmarks.

A 5 ms ``QTimer`` on the GUI thread beats while the benchmark pumps the event loop; the gaps
between its beats are the stalls. Needs a ``QApplication`` (a napari viewer makes one).

Example
-------
>>> heartbeat = Heartbeat()                       # doctest: +SKIP
>>> heartbeat.start()                             # doctest: +SKIP
>>> pump_events(lambda: widget.running)           # doctest: +SKIP
>>> heartbeat.stop(); max(heartbeat.intervals())  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qtpy.QtCore import QTimer  # noqa: TID251 (benchmarks of the widgets)
from qtpy.QtWidgets import QApplication  # noqa: TID251

BEAT_MS = 5


class Heartbeat:
    """Record ``(gap, when it ended)`` between the beats of a 5 ms GUI-thread timer."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.timeout.connect(self._beat)

    def _beat(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self._last, now))
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._timer.start(BEAT_MS)

    def stop(self) -> None:
        self._timer.stop()

    def intervals(self) -> list[float]:
        """The gaps alone, in seconds."""
        return [gap for gap, _ in self.gaps]


def pump_events(keep_going: Callable[[], bool]) -> None:
    """Run the GUI event loop (as napari's does, 1 ms apart) while ``keep_going()``."""
    while keep_going():
        QApplication.processEvents()
        time.sleep(0.001)


def pump_events_for(seconds: float) -> None:
    """Run the GUI event loop for ``seconds``."""
    end = time.perf_counter() + seconds
    pump_events(lambda: time.perf_counter() < end)


def idle_heartbeat(seconds: float) -> list[float]:
    """The gaps between the heartbeat's beats for ``seconds``, no run going."""
    heartbeat = Heartbeat()
    heartbeat.start()
    pump_events_for(seconds)
    heartbeat.stop()
    return heartbeat.intervals()
