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
import dataclasses
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

import numpy as np

from napari_patchwork.core.allocator import keeping_freed_memory
from napari_patchwork.core.training.config import Region, TrainingConfig
from napari_patchwork.core.training.trainer import Prediction, Trainer, TrainingStep

_HEADER = struct.Struct("!Q")
#: Errors the child hands back as themselves; any other is a RuntimeError naming its type.
_KNOWN_ERRORS = (ValueError, TypeError, RuntimeError, FileNotFoundError, OSError, KeyError)


# ---------------------------------------------------------------------------- framing
def _write(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))  # apart: joined, a volume's message is copied again
    stream.write(data)
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


class SpawnError(RuntimeError):
    """No training process could be started."""


def child_processes_supported() -> bool:
    """Whether a child Python can be started: not in a frozen application (PyInstaller and
    the like), whose executable is the application itself, not an interpreter."""
    return not getattr(sys, "frozen", False) and bool(sys.executable)


def _has_stderr() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):  # pythonw, a GUI launcher, a closed stream
        return False


def _spawn() -> subprocess.Popen[bytes]:
    if not child_processes_supported():
        raise SpawnError(
            "cannot start a training process: this Python is a frozen application"
            f" ({sys.executable!r}); use LocalTrainer"
        )
    command = [sys.executable, "-m", "napari_patchwork.core.training._child"]
    try:  # the child prints to ours; where we have none (pythonw), to nowhere
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if _has_stderr() else subprocess.DEVNULL,
            env=keeping_freed_memory(),  # a step's activations not faulted in afresh each time
        )
    except OSError as error:
        raise SpawnError(f"cannot start a training process ({sys.executable}): {error}") from None


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
            try:
                _spare = _spawn()
            except SpawnError:  # none can start: the trainer that needs one says why
                _spare = None


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


def _keep_as_spare(process: subprocess.Popen[bytes]) -> bool:
    """Keep an unused, idle child (its trainer refused the input) for the next trainer."""
    global _spare
    with _spare_lock:
        if _spare is None and process.poll() is None:
            _spare = process
            return True
    return False


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
        self._runs = 0  # runs started: a stop names the run it ends
        self._active: int | None = None  # the run in progress, if any
        self._process = _take_child()
        try:
            self.class_values = self._call("init", pairs, self.config)
        except (ValueError, TypeError) as error:  # the input refused: the child is still idle
            if not (self.running and _keep_as_spare(self._process)):
                self.close()
            raise error from None
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
        killed = code is not None and code < 0 and -code == getattr(signal, "SIGKILL", 9)
        reason = (
            "it was killed, most often because the computer ran out of memory: try a smaller"
            " patch size or batch size"
            if killed
            else "details, if any, were printed where napari or Python was started"
        )
        return RuntimeError(f"the training process ended unexpectedly (exit code {code}): {reason}")

    def _call(self, command: str, *arguments: object) -> Any:
        if self._active is not None:
            raise RuntimeError(f"cannot {command} while a training run is in progress")
        self._send(command, *arguments)
        kind, payload = self._receive()
        if kind != "result":
            raise RuntimeError(f"the training process answered {command!r} with {kind!r}")
        return payload

    # ------------------------------------------------------------------ Trainer's interface
    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self._process.poll() is None

    def set_annotations(self, pairs: Any) -> None:
        """Replace the images and annotations (e.g. after painting corrections)."""
        self.class_values = self._call("set_annotations", pairs)

    def stop(self) -> None:
        """End the current run after its current step; weights are kept.

        Safe from any thread while another one iterates :meth:`run`. Unlike
        :meth:`Trainer.stop`, a stop while no run is in progress does nothing (it does not
        cancel the next run: a Stop pressed during the final prediction would).
        """
        run = self._active
        if run is None:
            return
        try:
            self._send("stop", run)
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

        Previews carry labels and the painted agreement; their ``probabilities`` are empty
        (a whole-volume preview in a 3D view would pipe C float volumes every few seconds):
        :meth:`predict` gives them.
        """
        if self._active is not None:
            raise RuntimeError("a training run is already in progress")
        region = preview() if callable(preview) else preview
        self._send("region", region)
        self._runs += 1
        self._active = self._runs
        try:
            self._send("run", self._runs, seconds, iterations, preview is not None)
        except BaseException:
            self._active = None
            raise
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
                self._count(payload)
                if callable(preview):
                    current = preview()
                    if current != region:
                        region = current
                        self._send("region", region)
                yield payload
        finally:
            if not finished and self.running:  # closed early: end the child's run, in step
                self.stop()
                self._drain()
            self._active = None

    def _count(self, step: TrainingStep) -> None:
        self.iteration = step.iteration
        self.losses.append(step.loss)

    def _drain(self) -> None:
        try:
            while True:
                kind, payload = self._receive()
                if kind == "done":
                    return
                self._count(payload)  # steps done before the stop arrived still count
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
        closing: the child is reaped in the background, also while another thread is still
        writing it a volume, which is written whole first)."""

        def finish(wait: bool) -> None:
            with self._write_lock:
                _close_input(self._process)
            _end(self._process, wait)

        if wait:
            finish(True)
        elif self._write_lock.acquire(blocking=False):  # nobody is writing
            try:
                _close_input(self._process)
            finally:
                self._write_lock.release()
            _end(self._process, False)
        else:  # a volume is being piped (Continue's annotations): not on the caller's thread
            threading.Thread(target=finish, args=(True,), daemon=True).start()

    def __enter__(self) -> TrainerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class LocalTrainer(Trainer):
    """A :class:`Trainer` with :class:`TrainerProcess`'s ``close``: training in this process,
    for where no child Python can start (a frozen application).

    Examples
    --------
    >>> import torch
    >>> image = torch.rand(12, 12, 12)
    >>> strokes = torch.zeros(12, 12, 12, dtype=torch.int64)
    >>> strokes[2:4, 2:4, 2:4], strokes[8:10, 8:10, 8:10] = 1, 2
    >>> trainer = LocalTrainer((image, strokes), TrainingConfig(patch_size=8, width=2))
    >>> [step.iteration for step in trainer.run(iterations=2)]
    [1, 2]
    >>> trainer.close()
    """

    _running = False

    def run(
        self,
        seconds: float | None = None,
        iterations: int | None = None,
        preview: Region | Callable[[], Region | None] | None = None,
    ) -> Iterator[TrainingStep]:
        """As :meth:`Trainer.run`; :meth:`stop` acts only while it runs."""
        self._running = True
        try:
            yield from super().run(seconds, iterations, preview)
        finally:
            self._running = False

    def stop(self) -> None:
        """End the current run after its current step; between runs it does nothing (as
        :meth:`TrainerProcess.stop`: a Stop during the final prediction must not cancel the
        next Continue)."""
        if self._running:
            super().stop()

    def close(self, wait: bool = True) -> None:
        """End the current run after its current step (nothing else to end here)."""
        self.stop()


def start_trainer(
    pairs: Any, config: TrainingConfig | None = None
) -> TrainerProcess | LocalTrainer:
    """A :class:`TrainerProcess`, or a :class:`LocalTrainer` where no child Python can start.

    Examples
    --------
    >>> import torch
    >>> strokes = torch.zeros(12, 12, 12, dtype=torch.int64)
    >>> strokes[:2], strokes[-2:] = 1, 2
    >>> trainer = start_trainer((torch.rand(12, 12, 12), strokes), TrainingConfig(patch_size=8))
    >>> type(trainer).__name__, trainer.class_values
    ('TrainerProcess', [1, 2])
    >>> trainer.close()
    """
    if child_processes_supported():
        try:
            return TrainerProcess(pairs, config)
        except SpawnError:  # no interpreter to start (moved, removed): train here
            pass
    return LocalTrainer(pairs, config)


# ---------------------------------------------------------------------------- the child's side
def _without_probabilities(step: TrainingStep) -> TrainingStep:
    """The step with its preview's probabilities left out (labels and agreement kept)."""
    preview = step.preview
    if preview is None:
        return step
    empty = np.zeros((preview.probabilities.shape[0], 0, 0, 0), np.float32)
    return dataclasses.replace(step, preview=dataclasses.replace(preview, probabilities=empty))


class _Child:
    """The child's state: the trainer, the preview region, the command queue and which run a
    stop may end."""

    def __init__(self, replies: IO[bytes]) -> None:
        self.trainer: Trainer | None = None
        self.region: Region | None = None
        self.replies = replies
        self.commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.running: int | None = None  # the run in progress
        self.stop_next: int | None = None  # a run asked to stop before it started

    def listen(self, requests: IO[bytes]) -> None:
        """Reader thread: stop and region act at once, other commands queue up."""
        while True:
            try:
                message = _read(requests)
            except (EOFError, OSError):
                message = ("close",)
            except Exception as error:  # noqa: BLE001 (unpicklable: e.g. a class of the
                # parent's __main__); the parent waits for a reply: it gets this error
                message = ("unreadable", f"{type(error).__name__}: {error}")
            if message[0] == "stop":
                self.stop(message[1])
            elif message[0] == "region":
                self.region = message[1]
            else:
                self.commands.put(message)
                if message[0] == "close":
                    if self.trainer is not None:
                        self.trainer.stop()
                    return

    def stop(self, run: int) -> None:
        """End ``run`` if it is in progress or queued; a stop for a finished run is dropped."""
        with self.lock:
            if self.running == run and self.trainer is not None:
                self.trainer.stop()
            elif self.running is None or run > self.running:
                self.stop_next = run

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
        if command == "unreadable":
            raise TypeError(
                f"the training process could not read its input ({arguments[0]}): pass plain"
                " numpy arrays, tensors or file paths"
            )
        if command == "init":
            self.trainer = Trainer(*arguments)
            _write(self.replies, ("result", self.trainer.class_values))
            return
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("no trainer: the parent sent no 'init'")
        if command == "run":
            self.train(trainer, *arguments)
        elif command == "set_annotations":
            trainer.set_annotations(arguments[0])
            _write(self.replies, ("result", trainer.class_values))
        elif command == "predict":
            _write(self.replies, ("result", trainer.predict(region=arguments[0])))
        elif command == "save":
            _write(self.replies, ("result", trainer.save(arguments[0])))
        else:
            raise ValueError(f"unknown command {command!r}")

    def train(
        self,
        trainer: Trainer,
        run: int,
        seconds: float | None,
        iterations: int | None,
        with_preview: bool,
    ) -> None:
        with self.lock:
            self.running = run
            if self.stop_next == run:
                trainer.stop()
        preview = (lambda: self.region) if with_preview else None
        try:
            for step in trainer.run(seconds, iterations, preview):
                _write(self.replies, ("step", _without_probabilities(step)))
        finally:
            with self.lock:  # a stop that came as the run ended must not end the next one
                self.running = None
                trainer.clear_stop()
        _write(self.replies, ("done", None))


def serve() -> None:
    """The child's main (``_child.py``): replies on the original standard output, prints go
    to standard error (or nowhere, where there is none)."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    errors = sys.stderr.fileno() if _has_stderr() else os.open(os.devnull, os.O_WRONLY)
    os.dup2(errors, sys.stdout.fileno())
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
