"""``TrainerProcess``: a :class:`Trainer` run in a child Python process, for GUIs.

Why a process, not a thread of the GUI's:

- *The user's work survives the training.* A run that exhausts memory is killed by the
  system: in a thread it takes napari down with every painted stroke; in a child only the
  child dies, and the caller gets a ``RuntimeError`` saying so.
- *No import stall in the GUI.* A torch optimiser imports ``torch._dynamo`` and sympy when it
  is created (about 820 modules, 2-4 s, holding the interpreter lock 100-170 ms at a time, then
  a full garbage collection of everything napari made): the training dock froze 244-535 ms
  when it opened. The child imports them; the GUI process never does.
- *The GUI keeps its interpreter lock.* Training keeps three Python threads busy (the loop, the
  batch thread, the Queue's loader); in the child they never hold the GUI's lock. (On the
  2-core, software-OpenGL machine where this was measured the worst heartbeat gaps did not
  change: they are napari's frame, see docs/interactive.md.)

The child is ``python -m napari_patchwork.core.training._child``: it imports nothing of the
caller's ``__main__`` (as ``multiprocessing``'s spawn would, re-running an unguarded user
script), reads pickled commands on its standard input and writes pickled replies on the
standard output it was started with (anything the child prints goes to standard error). It
runs at the parent's priority: a lower one (nice 10) did not change the GUI's gaps here and
starves the training whenever anything else keeps the cores busy. It exits when its input
closes, so it never outlives its parent; Ctrl-C is the parent's to handle.
"""

from __future__ import annotations

import atexit
import builtins
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from napari_patchwork.core.training.config import Region, TrainingConfig
from napari_patchwork.core.training.trainer import Prediction, TrainingStep

_HEADER = struct.Struct("!Q")
#: Errors the child hands back as themselves; any other is a RuntimeError naming its type.
_KNOWN_ERRORS = (ValueError, TypeError, RuntimeError, FileNotFoundError, OSError, KeyError)


# ---------------------------------------------------------------------------- framing
def _write(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    """The next message; EOFError when the other side has gone."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 (our own child's replies, over its own pipe)


def _error_of(kind: str, message: str) -> BaseException:
    error_type = getattr(builtins, kind, None)
    if isinstance(error_type, type) and issubclass(error_type, _KNOWN_ERRORS):
        return error_type(message)
    return RuntimeError(f"{kind}: {message}")


# ---------------------------------------------------------------------------- the parent's side
_spare: subprocess.Popen[bytes] | None = None
_spare_lock = threading.Lock()


def _spawn() -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "napari_patchwork.core.training._child"]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def prewarm() -> None:
    """Start a child now (torch and the optimiser's modules load in it, 2-4 s), for the next
    :class:`TrainerProcess` to take; a GUI calls this when its dock opens.

    Examples
    --------
    >>> prewarm(); prewarm()  # at most one child waits
    >>> shutdown_spare()
    """
    global _spare
    with _spare_lock:
        if _spare is None or _spare.poll() is not None:
            _spare = _spawn()


def shutdown_spare() -> None:
    """End the child waiting for a trainer, if any (also at exit): killed at once, it holds
    nothing (closing its input would wait for its imports to end, 2-4 s)."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.kill()
        _end(spare)


atexit.register(shutdown_spare)


def _take_child() -> subprocess.Popen[bytes]:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare.poll() is None:
        return spare
    return _spawn()


def _close_input(process: subprocess.Popen[bytes]) -> None:
    try:
        if process.stdin is not None:
            process.stdin.close()
    except OSError:  # the child has gone (a broken pipe while flushing)
        pass


def _end(process: subprocess.Popen[bytes], wait: bool = True, timeout: float = 10.0) -> None:
    """Close the child's input (it exits after its current step) and reap it: here, or in a
    daemon thread when ``wait`` is False (a GUI closing); killed after ``timeout`` seconds."""
    _close_input(process)

    def reap() -> None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()  # a reader still in read() gets its EOF first

    if wait:
        reap()
    else:
        threading.Thread(target=reap, daemon=True, name="patchwork-trainer-reaper").start()


class TrainerProcess:
    """A :class:`Trainer` in a child process, driven as if it were here.

    Parameters
    ----------
    pairs : (image, annotations) or list of them
        As for :class:`Trainer` (arrays, tensors or NIfTI paths; they are pickled to the child).
    config : TrainingConfig, optional
        The settings (defaults if omitted).

    Attributes
    ----------
    iteration : int
        Steps done in all runs (as the child reported them).
    losses : list of float
        The loss of every step.
    class_values : list of int
        The painted values, in channel order.

    Examples
    --------
    >>> import torch
    >>> image = torch.rand(12, 12, 12)
    >>> strokes = torch.zeros(12, 12, 12, dtype=torch.int64)
    >>> strokes[2:4, 2:4, 2:4], strokes[8:10, 8:10, 8:10] = 1, 2
    >>> config = TrainingConfig(patch_size=8, iterations=2, width=2)
    >>> trainer = TrainerProcess((image, strokes), config)
    >>> [step.iteration for step in trainer.run()], trainer.class_values
    ([1, 2], [1, 2])
    >>> trainer.predict().labels.shape
    (12, 12, 12)
    >>> trainer.close()
    """

    def __init__(self, pairs: Any, config: TrainingConfig | None = None) -> None:
        if config is not None and not isinstance(config, TrainingConfig):
            raise TypeError(f"config must be a TrainingConfig, got {type(config)}")
        self.config = config or TrainingConfig()
        self.iteration = 0
        self.losses: list[float] = []
        self.class_values: list[int] = []
        self._write_lock = threading.Lock()
        self._process = _take_child()
        try:
            self.class_values = self._call("init", pairs, self.config)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _send(self, *message: object) -> None:
        stdin = self._process.stdin
        with self._write_lock:
            if stdin is None or stdin.closed:
                raise RuntimeError("the training process was closed")
            try:
                _write(stdin, message)
            except (BrokenPipeError, OSError):
                raise self._gone() from None

    def _receive(self) -> tuple[str, Any]:
        assert self._process.stdout is not None
        try:
            kind, payload = _read(self._process.stdout)
        except (EOFError, OSError, ValueError):
            raise self._gone() from None
        if kind == "error":
            raise _error_of(*payload)
        return kind, payload

    def _gone(self) -> RuntimeError:
        code = self._process.poll()
        if code is None:
            try:
                code = self._process.wait(2)
            except subprocess.TimeoutExpired:
                code = None
        return RuntimeError(
            f"the training process ended unexpectedly (exit code {code}); its messages are on"
            " standard error"
        )

    def _call(self, command: str, *arguments: object) -> Any:
        self._send(command, *arguments)
        return self._receive()[1]

    # ------------------------------------------------------------------ Trainer's interface
    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self._process.poll() is None

    def set_annotations(self, pairs: Any) -> None:
        """Replace the images and annotations (e.g. after painting corrections)."""
        self.class_values = self._call("set_annotations", pairs)

    def stop(self) -> None:
        """End the current (or the next) run after its current step; weights are kept.

        Safe from any thread while another one iterates :meth:`run`.
        """
        try:
            self._send("stop")
        except RuntimeError:
            pass  # closed or gone: nothing runs

    def run(
        self,
        seconds: float | None = None,
        iterations: int | None = None,
        preview: Region | Callable[[], Region | None] | None = None,
    ) -> Iterator[TrainingStep]:
        """Train in the child, yielding its :class:`TrainingStep` after each step.

        ``preview`` (a region, or a callable evaluated here after each step) is sent to the
        child when it changes; its previews arrive in the steps.
        """
        region = preview() if callable(preview) else preview
        self._send("region", region)
        self._send("run", seconds, iterations, preview is not None)
        finished = False  # the child's run has ended (done, or an error it reported)
        try:
            while True:
                try:
                    kind, payload = self._receive()
                except BaseException:
                    finished = True
                    raise
                if kind == "done":
                    finished = True
                    return
                step: TrainingStep = payload
                self.iteration = step.iteration
                self.losses.append(step.loss)
                if callable(preview):
                    current = preview()
                    if current != region:
                        region = current
                        self._send("region", region)
                yield step
        finally:
            if not finished and self.running:  # closed early: end the child's run, in step
                self.stop()
                self._drain()

    def _drain(self) -> None:
        try:
            while self._receive()[0] != "done":
                pass
        except _KNOWN_ERRORS:  # RuntimeError among them: the child has gone
            pass

    def predict(self, region: Region | None = None) -> Prediction:
        """The first training image's prediction over ``region`` (default: all)."""
        prediction: Prediction = self._call("predict", region)
        return prediction

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the model (the child writes the file); returns the path written."""
        written: Path = self._call("save", Path(path))
        return written

    def close(self, wait: bool = True) -> None:
        """End the child after its current step; ``wait=False`` returns at once (a GUI
        closing: the child is reaped in the background)."""
        with self._write_lock:  # a message being written is written whole first
            _close_input(self._process)
        _end(self._process, wait)

    def __enter__(self) -> TrainerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- the child's side
class _Child:
    """The child's state: the trainer, the preview region and the command queue."""

    def __init__(self, replies: IO[bytes]) -> None:
        from napari_patchwork.core.training.trainer import Trainer

        self.trainer: Trainer | None = None
        self.region: Region | None = None
        self.replies = replies
        self.commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.stop_pending = False

    def listen(self, requests: IO[bytes]) -> None:
        """Reader thread: stop and region act at once, other commands queue up."""
        while True:
            try:
                message = _read(requests)
            except (EOFError, OSError):
                message = ("close",)
            if message[0] == "stop":
                if self.trainer is not None:
                    self.trainer.stop()
                else:
                    self.stop_pending = True
            elif message[0] == "region":
                self.region = message[1]
            else:
                self.commands.put(message)
                if message[0] == "close":
                    if self.trainer is not None:
                        self.trainer.stop()
                    return

    def serve(self) -> None:
        while True:
            command, *arguments = self.commands.get()
            if command == "close":
                return
            try:
                self.handle(command, arguments)
            except BaseException as error:  # handed to the parent, which raises it
                _write(self.replies, ("error", (type(error).__name__, str(error))))

    def handle(self, command: str, arguments: list[Any]) -> None:
        from napari_patchwork.core.training.trainer import Trainer

        if command == "init":
            self.trainer = Trainer(*arguments)
            if self.stop_pending:
                self.trainer.stop()
            _write(self.replies, ("result", self.trainer.class_values))
            return
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("no trainer: the parent sent no 'init'")
        if command == "run":
            seconds, iterations, with_preview = arguments
            preview = (lambda: self.region) if with_preview else None
            for step in trainer.run(seconds, iterations, preview):
                _write(self.replies, ("step", step))
            _write(self.replies, ("done", None))
        elif command == "set_annotations":
            trainer.set_annotations(arguments[0])
            _write(self.replies, ("result", trainer.class_values))
        elif command == "predict":
            _write(self.replies, ("result", trainer.predict(region=arguments[0])))
        elif command == "save":
            _write(self.replies, ("result", trainer.save(arguments[0])))
        else:
            raise ValueError(f"unknown command {command!r}")


def serve() -> None:
    """The child's main (``_child.py``): replies on the original standard output, prints go
    to standard error."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent's
    from napari_patchwork.core.training.trainer import import_optimiser_modules

    import_optimiser_modules()  # while the user paints (prewarm), not in the first step
    child = _Child(replies)
    listener = threading.Thread(target=child.listen, args=(sys.stdin.buffer,), daemon=True)
    listener.start()
    try:
        child.serve()
    except OSError:  # a broken pipe: the parent has gone, nobody to tell
        os._exit(0)
