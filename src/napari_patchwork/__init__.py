"""napari-patchwork: patch-based deep learning for 3D images that you can see.

The public core API (TorchIO's patch-pipeline names) is available here, so
``import napari_patchwork as tio`` runs TorchIO-style code; TorchIO 2's module paths
(``napari_patchwork.data.patch``, ``.data.batch``, ``.loader``, …) exist too. No GUI
package is imported.

The names are loaded on first use (PEP 562): ``import napari_patchwork`` alone imports
neither torch nor the core, so the napari reader opens a NIfTI file without loading torch.

Examples
--------
>>> import napari_patchwork as tio
>>> tio.PatchLocation(index=(0, 0, 0), size=(4, 4, 4)).index_fin
(4, 4, 4)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = ("data", "loader")

if TYPE_CHECKING:  # the names type checkers and IDEs see
    from . import data, loader  # noqa: F401
    from .core import *  # noqa: F403


def _core_names() -> list[str]:
    from .core import __all__ as names

    return list(names)


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return [*_core_names(), "__version__", *_SUBMODULES]
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    core = importlib.import_module(".core", __name__)
    if name in core.__all__:
        value = getattr(core, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_core_names(), *_SUBMODULES})
