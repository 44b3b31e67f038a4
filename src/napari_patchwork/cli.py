"""Command line: ``napari-patchwork infer INPUT --model SOURCE --output OUT.nii.gz``.

The entry point (:func:`main`): parses the command line, runs ``infer``, ``train`` or
``demo``, and turns errors into one line on stderr and an exit code. The pieces:

- :mod:`.cli_args`: the parser, ``parse_args``, the ``InferenceConfig`` of the flags;
- :mod:`.cli_infer`: running ``infer`` (NIfTI in memory, zarr locally or on dask);
- :mod:`.cli_files`: output and model-file checks before the run, atomic NIfTI writing;
- :mod:`.cli_train`: the ``train`` command.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli_args import build_parser, parse_args

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def __getattr__(name: str) -> Any:
    """``build_parser`` and ``parse_args``, imported on first use (they import torch)."""
    if name in ("build_parser", "parse_args"):
        from . import cli_args

        return getattr(cli_args, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _demo() -> int:
    try:
        from .widgets.demo import run_demo
    except ImportError:
        raise ValueError(
            "the demo needs napari: pip install -e '.[napari]' in the napari-patchwork checkout"
        ) from None
    return run_demo()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-patchwork``: returns 0, 2 (error) or 130 (interrupted).

    Errors are one line on stderr; ``--traceback`` (or ``PATCHWORK_DEBUG=1``) adds the
    traceback.
    """
    args: Any = None
    try:
        # Imported here, inside the handlers: importing torch takes seconds on a busy machine,
        # and Ctrl-C meanwhile must end like any other interruption (one line, exit 130).
        from .cli_args import parse_args

        args = parse_args(argv)
        if args.command == "train":
            from .cli_train import run_train

            return run_train(args)
        if args.command == "demo":
            return _demo()
        from .cli_infer import run_infer

        return run_infer(args)
    except KeyboardInterrupt:
        print("napari-patchwork: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if getattr(args, "traceback", False) or os.environ.get("PATCHWORK_DEBUG"):
            traceback.print_exc()
        expected = isinstance(error, (OSError, ValueError, TypeError))
        kind = "" if expected else f"{type(error).__name__}: "  # the model (or torch) failed
        demo = getattr(args, "command", None) == "demo"
        hint = "" if expected or demo else " (--traceback shows where)"
        print(f"napari-patchwork: error: {kind}{_one_line(error)}{hint}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines)[:500] if lines else type(error).__name__


__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "build_parser", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
