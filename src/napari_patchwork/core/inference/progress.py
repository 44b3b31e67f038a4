"""``ProgressBar``: patches done out of the total, on stderr (tqdm when installed).

The one progress bar of the package: :func:`~napari_patchwork.infer` (``progress=True``) and
the command line both show runs through it.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class ProgressBar:
    """Shows ``done / total`` patches; ``update`` after each batch, ``close`` at the end.

    Uses tqdm when it is installed, else one line rewritten on stderr. The bar is created at
    the first update (when the total is known) and closes itself when ``done == total``.

    Parameters
    ----------
    description : str, optional
        Shown before the count (e.g. the input file's name).
    enabled : bool
        False: every call does nothing (so callers need no branch).

    Examples
    --------
    >>> with ProgressBar("demo", enabled=False) as bar:
    ...     for done in (2, 4):
    ...         bar.update(done, 4)
    >>> bar.done
    4
    """

    def __init__(self, description: str | None = None, enabled: bool = True) -> None:
        if description is not None and not isinstance(description, str):
            raise TypeError(f"description must be a string, got {description!r}")
        self.description, self.enabled = description, bool(enabled)
        self.done = 0
        self._bar: Any = None
        self._closed = False

    def update(self, done: int, total: int) -> None:
        """Show that ``done`` of ``total`` patches are finished."""
        self.done = done
        if not self.enabled or self._closed:
            return
        if self._bar is None:
            self._bar = _new_bar(total, self.description)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        else:  # pragma: no cover - tqdm is installed with the package's extras
            name = self.description or "tiled inference"
            end = "\n" if done == total else ""
            print(f"\r{name}: {done}/{total} patches", end=end, file=sys.stderr)
        if done == total:
            self.close()

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None and not self._closed:
            self._bar.close()
        self._closed = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _new_bar(total: int, description: str | None) -> Any:
    """A tqdm bar, or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(total=total, unit="patch", desc=description)
