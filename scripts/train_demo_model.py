"""Train the bundled demo network on synthetic volumes (a few minutes on 2 CPU cores).

Trains on seeds 1..N of the synthetic generator with our own Queue + LabelSampler, evaluates
with tiled inference on the held-out sample volume (seed 0, 160³), and writes the weights to
src/napari_patchwork/models/demo_unet.pt (a state dict, loaded with weights_only=True).

    python scripts/train_demo_model.py [--iterations 700] [--volumes 6]
"""

from __future__ import annotations

import argparse
import time

import torch

import napari_patchwork as pw
from napari_patchwork.data import make_sample
from napari_patchwork.models import DEMO_CLASSES, DEMO_WEIGHTS, TinyUNet3D


def dice_per_class(prediction: torch.Tensor, labels: torch.Tensor) -> list[float]:
    scores = []
    for label in range(1, len(DEMO_CLASSES)):
        predicted, true = prediction == label, labels == label
        overlap = 2 * (predicted & true).sum()
        scores.append(float(overlap / (predicted.sum() + true.sum()).clamp(min=1)))
    return scores


def training_subjects(count: int, size: int) -> list[pw.Subject]:
    subjects = []
    for seed in range(1, count + 1):
        volume = make_sample((size,) * 3, seed=seed)
        subjects.append(
            pw.Subject(
                image=pw.ScalarImage(volume.image[None]),
                labels=pw.LabelMap(volume.labels[None].astype("int64")),
            )
        )
    return subjects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=700)
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--patch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    subjects = training_subjects(args.volumes, args.size)
    sampler = pw.LabelSampler(None, args.patch, "labels", {0: 0.4, 1: 0.3, 2: 0.3})
    queue = pw.Queue(subjects, sampler, max_length=256, patches_per_volume=64, num_workers=2)
    model = TinyUNet3D(1, len(DEMO_CLASSES), width=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=args.iterations)
    loss_function = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 1.0, 2.0]))
    step, start = 0, time.time()
    while step < args.iterations:
        for batch in pw.SubjectsLoader(queue, batch_size=8):
            loss = loss_function(model(batch.image.data), batch.labels.data[:, 0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0:
                seconds = time.time() - start
                print(f"step {step}  loss {loss.item():.4f}  {seconds:.0f} s", flush=True)
            if step == args.iterations:
                break
    model.eval()
    held_out = make_sample((160, 160, 160), seed=0)
    logits = pw.infer(model, held_out.image[None], patch_size=64, patch_overlap=16, batch_size=2)
    scores = dice_per_class(logits.argmax(0), torch.from_numpy(held_out.labels.astype("int64")))
    print("held-out Dice (blob, tube):", [round(s, 3) for s in scores])
    torch.save(model.state_dict(), DEMO_WEIGHTS)
    size = DEMO_WEIGHTS.stat().st_size / 1024
    print(f"wrote {DEMO_WEIGHTS} ({size:.0f} KiB) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
