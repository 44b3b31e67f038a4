"""The headless core imports and runs with napari, Qt and magicgui impossible to import."""

import subprocess
import sys
import textwrap

BLOCKED = ["napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy"]

SCRIPT = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked GUI import: {{name}}")

    sys.meta_path.insert(0, Block())
    import torch
    import napari_patchwork.core as core
    import napari_patchwork
    from torch.utils.data import DataLoader
    subject = core.Subject(t1=core.ScalarImage(torch.rand(1, 8, 8, 8)))
    aggregator = core.PatchAggregator(subject.spatial_shape, "hann")
    for batch in DataLoader(core.GridSampler(subject, 4, 2), batch_size=2):
        aggregator.add_batch(batch.t1.data, batch.patch_location)
    assert torch.allclose(aggregator.get_output(), subject.t1.data, atol=1e-6)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


def test_core_works_without_gui_packages():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_core_sources_do_not_import_gui_packages():
    from pathlib import Path

    import napari_patchwork

    root = Path(napari_patchwork.__file__).parent
    for path in [*(root / "core").rglob("*.py"), *(root / "io").rglob("*.py")]:
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in BLOCKED, f"{path}: {stripped}"


def test_importing_the_package_and_the_nifti_reader_does_not_load_torch():
    code = (
        "import sys, napari_patchwork, napari_patchwork.io, napari_patchwork.io.nifti\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert napari_patchwork.Subject.__name__ == 'Subject'  # loaded on first use\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_star_import_gives_the_public_api_only():
    namespace: dict = {}
    exec("from napari_patchwork import *", namespace)
    names = {name for name in namespace if not name.startswith("__")}
    assert {"GridSampler", "Queue", "infer", "SubjectsLoader", "data", "loader"} <= names
    assert not {name for name in names if name.startswith("_")}
