"""Which layer may import which, read from the sources (ast): io at the bottom, then core,
then the front ends (CLI, widgets, napari contributions, the dask engine)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import napari_patchwork

ROOT = Path(napari_patchwork.__file__).parent
PACKAGE = "napari_patchwork"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted ("napari_patchwork.core.data.lazy")
    target: str  # what it imports, absolute and dotted ("napari_patchwork.io.zarr_io")
    line: int
    top_level: bool  # run when the module is imported (not inside a function or class body)

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    if node.module is None:  # from . import a, b: each name may be a module
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def imports_of(path: Path) -> list[Import]:
    """Every import statement of ``path``, resolved to absolute module names."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only: never run
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, alias.name, child.lineno, top_level))
            elif isinstance(child, ast.ImportFrom):
                for target in _absolute(module, is_package, child):
                    found.append(Import(module, target, child.lineno, top_level))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top_level and not nested)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def _sources(folder: str = "") -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _inside(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(f"{p}.") for p in packages)


def _violations(folder: str, forbidden: tuple[str, ...], top_level_only: bool = False) -> list[str]:
    return [
        str(found)
        for path in _sources(folder)
        for found in imports_of(path)
        if _inside(found.target, *forbidden) and (found.top_level or not top_level_only)
    ]


def test_the_import_reader_resolves_relative_imports(tmp_path):
    path = ROOT / "core" / "samplers" / "base.py"  # relative imports: `from .._validation …`
    targets = {found.target for found in imports_of(path)}
    assert f"{PACKAGE}.core._validation" in targets
    assert all(not t.startswith(".") for t in targets)


#: every module of the command line (cli.py and its cli_*.py siblings)
CLI_MODULES = tuple(sorted(path.stem for path in ROOT.glob("cli*.py")))


def test_the_cli_modules_are_found():
    assert {"cli", "cli_args", "cli_infer", "cli_files", "cli_train"} <= set(CLI_MODULES)


def test_io_imports_nothing_of_the_package_outside_io():
    own = f"{PACKAGE}.io"
    bad = [
        str(found)
        for path in _sources("io")
        for found in imports_of(path)
        if _inside(found.target, PACKAGE) and not _inside(found.target, own)
    ]
    assert not bad, "io is the bottom layer:\n" + "\n".join(bad)


def test_core_imports_no_front_end():
    front_ends = tuple(
        f"{PACKAGE}.{name}"
        for name in ("widgets", *CLI_MODULES, "distributed", "napari_contributions")
    )
    bad = _violations("core", front_ends)
    assert not bad, "the core may not import a front end:\n" + "\n".join(bad)


def test_core_does_not_import_zarr_or_dask_when_imported():
    bad = _violations("core", ("zarr", "dask", "distributed"), top_level_only=True)
    assert not bad, "zarr and dask are optional, behind io and the dask engine:\n" + "\n".join(bad)


def test_core_lazy_and_streaming_never_import_zarr():
    bad = [
        str(found)
        for name in ("data/lazy.py", "inference/streaming.py")
        for found in imports_of(ROOT / "core" / name)
        if _inside(found.target, "zarr", "dask")
    ]
    assert not bad, "\n".join(bad)


def test_widgets_never_import_the_cli():
    bad = _violations("widgets", tuple(f"{PACKAGE}.{name}" for name in CLI_MODULES))
    assert not bad, "widgets and CLI are siblings:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("from ..core.lazy import open_zarr\n", f"{PACKAGE}.core.lazy"),
        ("def f():\n    from .. import cli\n", f"{PACKAGE}.cli"),
    ],
)
def test_the_checks_catch_a_violation(tmp_path, monkeypatch, source, forbidden):
    folder = tmp_path / PACKAGE / "io"
    folder.mkdir(parents=True)
    (folder / "fake.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path / PACKAGE)
    [found] = imports_of(folder / "fake.py")
    assert found.target == forbidden and found.module == f"{PACKAGE}.io.fake"
    assert found.top_level == ("def" not in source)
