"""The training half: a patch queue over NIfTI files on disk, ours vs TorchIO vs MONAI, same run.

Setting (issue 16): 12 subjects of 128³ (float32 image + uint8 labels, ``.nii.gz``), patches of
48³ centred by label (classes balanced), 8 patches per volume, batches of 8, 2 loading workers,
one epoch (96 patches) per measurement, round-robin, median after a warm-up. The floor is reading
every file with 2 threads (what no queue can beat); the no-op "model" consumes each batch, so
``patches/s`` is what a GPU training loop would be fed.

    python benchmarks/bench_training_queue.py [--subjects 12] [--size 128] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import napari_patchwork as pw
from napari_patchwork.sample import make_sample

warnings.filterwarnings("ignore")
PATCH, PER_VOLUME, BATCH, WORKERS = 48, 8, 8, 2


def write_subjects(folder: Path, count: int, size: int) -> list[tuple[Path, Path]]:
    pairs = []
    for index in range(count):
        sample = make_sample((size,) * 3, seed=index)
        image, labels = folder / f"image_{index}.nii.gz", folder / f"labels_{index}.nii.gz"
        nib.save(nib.Nifti1Image(sample.image.astype(np.float32), sample.affine), image)
        nib.save(nib.Nifti1Image(sample.labels.astype(np.uint8), sample.affine), labels)
        pairs.append((image, labels))
    return pairs


def read_floor(pairs: list[tuple[Path, Path]]) -> int:
    """Read every file with the same number of threads: the least any queue must spend."""
    paths = [path for pair in pairs for path in pair]
    with ThreadPoolExecutor(WORKERS) as pool:
        arrays = list(pool.map(lambda p: np.asarray(nib.load(p).dataobj), paths))
    return len(arrays)


def ours(pairs: list[tuple[Path, Path]]) -> int:
    subjects = [
        pw.Subject(image=pw.ScalarImage(image), labels=pw.LabelMap(labels))
        for image, labels in pairs
    ]
    queue = pw.Queue(
        subjects,
        pw.LabelSampler(None, PATCH, label_name="labels"),
        max_length=4 * PER_VOLUME,
        patches_per_volume=PER_VOLUME,
        num_workers=WORKERS,
    )
    return consume(batch.image.data for batch in pw.SubjectsLoader(queue, batch_size=BATCH))


def torchio(pairs: list[tuple[Path, Path]]) -> int:
    import torchio as tio

    subjects = [
        tio.Subject(image=tio.ScalarImage(image), labels=tio.LabelMap(labels))
        for image, labels in pairs
    ]
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=4 * PER_VOLUME,
        samples_per_volume=PER_VOLUME,
        sampler=tio.LabelSampler(PATCH, label_name="labels"),
        num_workers=WORKERS,
    )
    loader = tio.SubjectsLoader(queue, batch_size=BATCH, num_workers=0)
    return consume(batch["image"][tio.DATA] for batch in loader)


def monai(pairs: list[tuple[Path, Path]]) -> int:
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandCropByLabelClassesd

    keys = ["image", "labels"]
    transform = Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            RandCropByLabelClassesd(
                keys, "labels", (PATCH,) * 3, num_classes=3, num_samples=PER_VOLUME
            ),
        ]
    )
    data = [{"image": str(image), "labels": str(labels)} for image, labels in pairs]
    loader = DataLoader(Dataset(data, transform), batch_size=1, num_workers=WORKERS)
    return consume(batch["image"] for batch in loader)  # 8 patches of one volume per batch


def consume(batches: object) -> int:
    """The no-op training loop: touch every batch, count its patches."""
    count = 0
    for images in batches:  # type: ignore[attr-defined]
        count += int(images.shape[0])
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--peers", nargs="*", default=["TorchIO 1.2.1", "MONAI 1.6"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_subjects(Path(folder), args.subjects, args.size)
        runs: dict[str, Callable[[], int]] = {
            "read floor (2 threads)": lambda: read_floor(pairs),
            "napari-patchwork": lambda: ours(pairs),
        }
        peers = {"TorchIO 1.2.1": torchio, "MONAI 1.6": monai}
        for name in args.peers:
            runs[name] = lambda run=peers[name]: run(pairs)
        counts = {name: run() for name, run in runs.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    floor = seconds["read floor (2 threads)"]
    print(
        f"torch {torch.__version__}, {args.subjects} subjects {args.size}³ .nii.gz, patch "
        f"{PATCH}, {PER_VOLUME} per volume, batch {BATCH}, {WORKERS} workers, "
        f"median of {args.repeats}\n"
    )
    print("| method | median s | × floor | × ours | patches/s (no-op model) |")
    print("|---|---|---|---|---|")
    for name, value in seconds.items():
        rate = "" if name.startswith("read") else f"{counts[name] / value:.0f}"
        print(
            f"| {name} | {value:.3f} | {value / floor:.2f} | "
            f"{value / seconds['napari-patchwork']:.2f} | {rate} |"
        )


if __name__ == "__main__":
    main()
