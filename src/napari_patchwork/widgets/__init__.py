"""napari widgets: thin layers over the core (they build configs, call the core, show layers)."""

from .grid_overlay import PatchGridWidget
from .inference import TiledInferenceWidget
from .sampler_explorer import SamplerExplorerWidget
from .training import TrainingWidget

__all__ = ["PatchGridWidget", "SamplerExplorerWidget", "TiledInferenceWidget", "TrainingWidget"]
