"""napari-patchwork: patch-based deep learning for 3D images that you can see.

The public core API (TorchIO's patch-pipeline names) is re-exported here, so
``import napari_patchwork as tio`` runs TorchIO-style code; TorchIO 2's module paths
(``napari_patchwork.data.patch``, ``.data.batch``, ``.loader``, …) exist too. No GUI
package is imported.
"""

from . import data, loader
from .core import *  # noqa: F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__", "data", "loader"]
