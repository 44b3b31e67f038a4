"""``napari-patchwork train``: run_train on parsed arguments, with real NIfTI files."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_patchwork.cli_train import add_train_parser, config_from_args, run_train
from napari_patchwork.core.training import scribbles_from_labels
from napari_patchwork.io.models import load_model, model_class_values
from napari_patchwork.sample import make_sample

AFFINE = np.diag([0.5, 0.5, 0.8, 1.0])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="napari-patchwork")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("train")
    volume = make_sample((24, 24, 24), seed=3)
    strokes = scribbles_from_labels(volume.labels, slices=3, disks=2, seed=0)
    strokes[strokes == 3] = 0  # two classes painted: 1 = background, 2 = blobs
    image, annotations = folder / "image.nii.gz", folder / "strokes.nii.gz"
    nib.save(nib.Nifti1Image(volume.image, AFFINE), str(image))
    nib.save(nib.Nifti1Image(strokes.astype(np.uint8), AFFINE), str(annotations))
    return image, annotations


FAST = ("--patch-size", "16", "--batch-size", "2", "--width", "4", "--quiet")


def test_train_writes_a_model_with_the_painted_values(files, tmp_path, capsys) -> None:
    image, annotations = files
    output = tmp_path / "model.pt2"
    args = parse(str(image), str(annotations), "--output", str(output), "--iterations", "3", *FAST)
    assert run_train(args) == 0
    assert model_class_values(output) == [1, 2]
    model = load_model(output)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    message = capsys.readouterr().err
    assert "classes [1, 2], 3 iterations" in message and "--labels" in message


def test_two_pairs_and_a_progress_bar(files, tmp_path, capsys) -> None:
    image, annotations = files
    output = tmp_path / "two.pt2"
    pairs = [str(image), str(annotations)] * 2
    args = parse(*pairs, "-o", str(output), "--iterations", "2", *FAST[:-1])
    assert run_train(args) == 0
    err = capsys.readouterr().err
    assert "loss=" in err and "patches_s=" in err


def test_default_budget_is_a_time_budget() -> None:
    config = config_from_args(parse("a", "b", "--output", "m.pt2"))
    assert config.seconds == 60.0 and config.iterations is None
    assert config.network == "filters" and config.width == 32


def test_network_unet_trains_and_saves_a_unet(files, tmp_path) -> None:
    image, annotations = files
    output = tmp_path / "unet.pt2"
    args = parse(
        str(image), str(annotations), "-o", str(output), "--iterations", "2", "--network", "unet"
    )
    args.patch_size, args.width, args.quiet = 16, 4, True
    assert config_from_args(args).network == "unet"
    assert run_train(args) == 0
    from napari_patchwork.io.models import read_model_metadata

    assert read_model_metadata(output)["architecture"]["name"] == "TinyUNet3D"
    with pytest.raises(SystemExit):
        parse("a", "b", "-o", "m.pt2", "--network", "resnet")
    assert (
        config_from_args(parse("a", "b", "-o", "m.pt2", "--no-augmentation")).augmentation is None
    )


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (("--patch-size", "15"), "--patch-size must be even"),
        (("--iterations", "0"), "--iterations must be a positive int"),
        (("--seconds", "-2"), "--seconds must be a positive float"),
        (("--batch-size", "0"), "--batch-size must be a positive int"),
        (("--device", "toaster"), "--device must be"),
        (("--learning-rate", "0"), "--learning-rate must be a positive float"),
    ],
)
def test_bad_flags_are_named(files, tmp_path, flags, match) -> None:
    image, annotations = files
    args = parse(str(image), str(annotations), "-o", str(tmp_path / "m.pt2"), *flags)
    with pytest.raises(ValueError, match=match):
        run_train(args)


def test_bad_files_are_named(files, tmp_path) -> None:
    image, annotations = files
    output = str(tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="IMAGE ANNOTATIONS come in pairs, got 3 files"):
        run_train(parse(str(image), str(annotations), str(image), "-o", output))
    with pytest.raises(FileNotFoundError, match="ANNOTATIONS file does not exist: '.*nope.nii'"):
        run_train(parse(str(image), str(tmp_path / "nope.nii"), "-o", output))
    with pytest.raises(ValueError, match="--output folder does not exist"):
        run_train(parse(str(image), str(annotations), "-o", str(tmp_path / "no" / "m.pt2")))
    (tmp_path / "old.pt2").write_bytes(b"x")
    with pytest.raises(ValueError, match="--output exists: .*--overwrite"):
        run_train(parse(str(image), str(annotations), "-o", str(tmp_path / "old.pt2")))
    with pytest.raises(FileNotFoundError, match="init: model file does not exist"):
        run_train(parse(str(image), str(annotations), "-o", output, "--init", "nofile.pt2", *FAST))
    with pytest.raises(ValueError, match="--patch-size 32 is larger than image in every"):
        run_train(parse(str(image), str(annotations), "-o", output))  # 24³: all padding


def test_infer_defaults_to_the_patch_the_model_was_trained_with(files, tmp_path) -> None:
    """A scan of 24³ (under the demo's 64) segments with the trained model and no
    --patch-size: the model's 16 is used, with a quarter of it as overlap."""
    from napari_patchwork.cli import main
    from napari_patchwork.cli_args import inference_config, parse_args

    image, annotations = files
    model = tmp_path / "model.pt2"
    assert (
        run_train(parse(str(image), str(annotations), "-o", str(model), "--iterations", "2", *FAST))
        == 0
    )
    segmentation = tmp_path / "seg.nii.gz"
    argv = ["infer", str(image), "--model", str(model), "-o", str(segmentation), "--labels"]
    config = inference_config(parse_args(argv), "cpu", str(model))
    assert config.patch == (16, 16, 16) and config.overlap == (4, 4, 4)
    assert main(argv) == 0
    saved = nib.load(str(segmentation))
    assert np.allclose(saved.affine, AFFINE) and set(np.unique(saved.get_fdata())) <= {1, 2}


def test_infer_fits_the_models_patch_to_a_thin_scan(files, tmp_path) -> None:
    """Trained with patch 16 (training pads), the model segments a 10-slice scan without
    --patch-size: (16, 16, 10), overlap a quarter of each (before: "--patch-size (16, 16,
    16) is larger than the volume")."""
    from napari_patchwork.cli import main
    from napari_patchwork.cli_args import inference_config, parse_args
    from napari_patchwork.io.models import model_patch_size

    image, annotations = files
    model = tmp_path / "model.pt2"
    args = parse(str(image), str(annotations), "-o", str(model), "--iterations", "2", *FAST)
    assert run_train(args) == 0
    assert model_patch_size(model) == (16, 16, 16)
    thin = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(nib.load(str(image)).get_fdata()[:, :, 7:17], AFFINE), str(thin))
    segmentation = tmp_path / "seg.nii.gz"
    argv = ["infer", str(thin), "--model", str(model), "-o", str(segmentation), "--labels"]
    config = inference_config(parse_args(argv), "cpu", str(model), (24, 24, 10))
    assert config.patch == (16, 16, 10) and config.overlap == (4, 4, 2)
    with pytest.raises(ValueError, match=r"than the model's patch size \(16, 16, 10\) \(fitted"):
        inference_config(parse_args([*argv, "--overlap", "12"]), "cpu", str(model), (24, 24, 10))
    assert main(argv) == 0
    assert nib.load(str(segmentation)).shape == (24, 24, 10)
    zarr = pytest.importorskip("zarr")  # the zarr engine reads the shape from the store
    store = tmp_path / "thin.zarr"
    array = zarr.create_array(store=str(store), shape=(24, 24, 10), chunks=(8, 24, 10), dtype="f4")
    array[:] = nib.load(str(thin)).get_fdata().astype(np.float32)
    out = tmp_path / "seg.zarr"
    assert main(["infer", str(store), "--model", str(model), "-o", str(out), "--labels"]) == 0
    assert zarr.open_array(str(out)).shape[-3:] == (24, 24, 10)
