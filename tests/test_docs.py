"""Every Python block of the README, the getting-started and inference pages runs, in order (the
seed examples verbatim); install lines work for someone who is not on this machine."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

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


def test_readme_use_snippet_runs_as_pasted_and_both_variants_agree():
    blocks = python_blocks(README)
    assert len(blocks) == 2, "the README's Use section: the loop, then the engine"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # defines its own model and file
    volume = namespace["volume"]
    assert volume.shape == (3, 96, 96, 96)
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # asserts they agree
    assert torch.allclose(namespace["output"], volume, atol=1e-5)
    assert 'padding_mode="reflect"' in blocks[0] and 'padding_mode="reflect"' in blocks[1]


def repository_url():
    """The project's "Source Code" URL from pyproject.toml (no tomllib: Python 3.10 lacks it)."""
    [url] = re.findall(r'^"Source Code" = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    return url


def test_install_lines_use_the_repository_not_an_index_without_the_package():
    url = repository_url()
    for page in (README, DOCS / "getting-started.md", DOCS / "plugin.md"):
        text = page.read_text()
        installs = re.findall(r"pip install [^\n`]*napari-patchwork[^\n`]*", text)
        assert installs, page
        for line in installs:  # napari-patchwork is not on PyPI
            assert f"@ git+{url}" in line, f"{page.name}: {line}"
    readme = README.read_text()
    torch_cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert readme.index(torch_cpu) < readme.index(f"@ git+{url}"), "torch comes first"
    assert "pytorch.org/get-started" in readme and f"git clone {url}" in readme
    assert "torch==2.13.0" in readme  # what CI installs first
