"""Every Python block of the getting-started page runs, in order (the seed examples verbatim)."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"

SEED_EXAMPLES = """sampler = tio.GridSampler(subject, patch_size=64, patch_overlap=8)
loader = DataLoader(sampler, batch_size=4)
aggregator = tio.PatchAggregator(subject.spatial_shape, overlap_mode="hann")
for batch in loader:
    outputs = model(batch.t1.data)
    aggregator.add_batch(outputs, batch.patch_location)
volume = aggregator.get_output()

sampler = tio.UniformSampler(subject, patch_size=64, num_patches=100)
loader = DataLoader(sampler, batch_size=8)

aggregator = tio.PatchAggregator(spatial_shape=(256, 256, 176), overlap_mode="hann")

queue = tio.Queue(
    subjects,
    patch_sampler=tio.UniformSampler(subject, patch_size=64),
    max_length=300,
    patches_per_volume=10,
    num_workers=4,
)
loader = SubjectsLoader(queue, batch_size=16)
for batch in loader:
    outputs = model(batch.t1.data)
"""


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_getting_started_runs_and_holds_the_seed_examples_verbatim(capsys):
    blocks = python_blocks(DOCS / "getting-started.md")
    assert SEED_EXAMPLES in blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "getting-started.md", "exec"), namespace)
    volume = namespace["volume"]
    assert volume.shape == (1, 96, 96, 80)
    seen = [batch.t1.data.shape[0] for batch in namespace["loader"]]
    assert sum(seen) == 40 and seen[0] == 16


def test_inference_page_runs():
    namespace: dict = {}
    for block in python_blocks(DOCS / "inference.md"):
        exec(compile(block, "inference.md", "exec"), namespace)
    assert namespace["partial"].shape == namespace["logits"].shape
