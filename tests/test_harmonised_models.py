"""A model trained on one scan segments another scanner's version of it: train on nibabel's
EPI (a real NIfTI), infer with the CLI on a file of the same anatomy with a bias field, another
contrast and scale, and check the model file's intensity reference was used."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_patchwork.cli import main
from napari_patchwork.core.training import Trainer, TrainingConfig, scribbles_from_labels
from napari_patchwork.core.training.augmentation import simulate_scanner
from napari_patchwork.io.models import read_model_metadata

EPI = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
FAST = {"patch_size": 16, "batch_size": 2, "width": 8, "patches_per_volume": 8, "seed": 0}


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, object]:
    """The EPI's first frame and the 'other scanner' file, with the EPI's own affine."""
    folder = tmp_path_factory.mktemp("scans")
    source = nib.load(str(EPI))
    image = np.asarray(source.dataobj[..., 0], np.float32)
    truth = np.digitize(image, [200.0, 500.0]).astype(np.int64)  # background / dark / bright
    other = simulate_scanner(torch.from_numpy(image)[None], seed=1)[0].numpy()
    paths = {"image_file": folder / "epi.nii.gz", "other_file": folder / "other.nii.gz"}
    nib.save(nib.Nifti1Image(image, source.affine), str(paths["image_file"]))
    nib.save(nib.Nifti1Image(other, source.affine), str(paths["other_file"]))
    strokes = scribbles_from_labels(truth, slices=3, disks=3, seed=0)
    return {"image": image, "other": other, "strokes": strokes, "affine": source.affine, **paths}


def test_the_cli_maps_the_other_scanner_onto_the_training_scan(scans, tmp_path) -> None:
    trainer = Trainer((scans["image"], scans["strokes"]), TrainingConfig(**FAST, iterations=20))
    list(trainer.run())
    model = trainer.save(tmp_path / "epi.pt2")
    assert "intensity_reference" in read_model_metadata(model)
    output = tmp_path / "other_seg.nii.gz"
    flags = ["--patch-size", "16", "--overlap", "4", "--device", "cpu", "--labels"]
    assert (
        main(["infer", str(scans["other_file"]), "--model", str(model), "-o", str(output), *flags])
        == 0
    )
    written = nib.load(str(output))
    assert np.allclose(written.affine, scans["affine"])
    labels = np.asarray(written.dataobj)
    # the CLI harmonises as the trainer does, so its labels are the trainer's on that file
    expected = trainer.predict(scans["other_file"]).labels
    assert np.mean(labels == expected) > 0.99  # (the tilings differ at the borders)
    # and the other scanner is segmented (almost) as the training scan itself is
    on_the_scan = trainer.predict().labels
    assert np.mean(labels == on_the_scan) > 0.95


def test_without_harmonisation_the_file_has_no_reference(scans, tmp_path) -> None:
    config = TrainingConfig(**FAST, iterations=1, harmonise=False)
    trainer = Trainer((scans["image"], scans["strokes"]), config)
    list(trainer.run())
    assert trainer.harmonisation is None
    assert "intensity_reference" not in read_model_metadata(trainer.save(tmp_path / "raw.pt2"))
    with pytest.raises(TypeError, match="harmonise must be True or False"):
        TrainingConfig(harmonise="yes")


def test_a_second_training_scan_is_mapped_onto_the_first(scans) -> None:
    pairs = [(scans["image"], scans["strokes"]), (scans["other"], scans["strokes"])]
    trainer = Trainer(pairs, TrainingConfig(**FAST, iterations=1))
    first, second = trainer.images
    assert torch.equal(first[0], torch.from_numpy(scans["image"]))
    raw = np.corrcoef(scans["other"].ravel(), scans["image"].ravel())[0, 1]
    mapped = np.corrcoef(second.numpy().ravel(), scans["image"].ravel())[0, 1]
    assert raw < 0.96 and mapped > 0.99


def test_continuing_a_model_on_the_next_scan_keeps_its_reference(scans, tmp_path) -> None:
    """init=FILE on another scanner's volume: that volume is mapped onto the file's reference."""
    first = Trainer((scans["image"], scans["strokes"]), TrainingConfig(**FAST, iterations=1))
    list(first.run())
    path = first.save(tmp_path / "first.pt2")
    config = TrainingConfig(**FAST, iterations=1, init=str(path))
    resumed = Trainer((scans["other"], scans["strokes"]), config)
    assert resumed.harmonisation.reference == first.harmonisation.reference
    mapped = np.corrcoef(resumed.images[0].numpy().ravel(), scans["image"].ravel())[0, 1]
    assert mapped > 0.99
    list(resumed.run())
    again = read_model_metadata(resumed.save(tmp_path / "resumed.pt2"))
    assert again["intensity_reference"] == read_model_metadata(path)["intensity_reference"]
