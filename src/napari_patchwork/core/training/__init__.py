"""Training a network from sparse annotations with the patch pipeline.

One module per job: ``config`` (TrainingConfig), ``annotations`` (image/annotation pairs,
the scripted annotator), ``augmentation`` (the Queue's transform), ``batches`` (balanced
patches, shuffled ahead), ``networks`` (what is built or resumed, the loss), ``trainer``
(the loop: Trainer, train, iter_train) and ``process`` (TrainerProcess: a Trainer in a child
process, which a GUI drives so that training never shares its interpreter or its fate).
"""

from napari_patchwork.core.training.annotations import scribbles_from_labels
from napari_patchwork.core.training.augmentation import (
    AugmentationConfig,
    RandomAugmentation,
    simulate_scanner,
)
from napari_patchwork.core.training.config import NETWORKS, TrainingConfig
from napari_patchwork.core.training.networks import NormalizedNet, annotation_loss
from napari_patchwork.core.training.process import LocalTrainer, TrainerProcess, start_trainer
from napari_patchwork.core.training.trainer import (
    Prediction,
    Trainer,
    TrainingStep,
    import_optimiser_modules,
    iter_train,
    loss_text,
    train,
)

__all__ = [
    "NETWORKS",
    "AugmentationConfig",
    "LocalTrainer",
    "NormalizedNet",
    "Prediction",
    "RandomAugmentation",
    "Trainer",
    "TrainerProcess",
    "TrainingConfig",
    "TrainingStep",
    "annotation_loss",
    "import_optimiser_modules",
    "iter_train",
    "loss_text",
    "start_trainer",
    "scribbles_from_labels",
    "simulate_scanner",
    "train",
]
