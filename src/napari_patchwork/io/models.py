"""Loading models safely: TorchScript, ``torch.export`` archives, or ``module:factory``.

Pickled full models (``torch.save(model)``) can run arbitrary code when loaded, so they are
refused unless ``trust_pickle=True``; weight files (state dicts) load with
``weights_only=True``, which unpickles tensors and plain containers only.

Models trained here are saved as TorchScript with :func:`save_torchscript`, which stores the
label value of each output channel in the archive (``patchwork.json``);
:func:`read_model_metadata` reads it back from the zip without loading any code.
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEMO = "demo"  # shorthand for the bundled demo network


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _from_factory(source: str) -> Any:
    module_name, _, factory_name = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"model source '{source}': cannot import module '{module_name}': {error}"
        ) from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(
            f"model source '{source}': '{module_name}' has no callable '{factory_name}'"
        )
    model = factory()
    if not callable(model):
        raise TypeError(f"model source '{source}': the factory returned {type(model)}, not a model")
    return model


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist()
        )


def _is_exported(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("models/model.json") for name in archive.namelist())


def _from_file(path: Path, device: torch.device, trust_pickle: bool) -> Any:
    if path.suffix == ".pt2" or _is_exported(path):
        try:
            return torch.export.load(str(path)).module()
        except Exception as error:
            raise ValueError(f"cannot load torch.export archive '{path}': {error}") from error
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location=device)
        except Exception as error:
            raise ValueError(f"cannot load TorchScript file '{path}': {error}") from error
    if not trust_pickle:
        raise ValueError(
            f"'{path}' is not a TorchScript or torch.export file. Loading a pickled model can run "
            "arbitrary code; pass trust_pickle=True (--trust-pickle) only for files you trust, or "
            "use 'module:factory' with weights=… for a state dict"
        )
    try:
        model = torch.load(str(path), map_location=device, weights_only=False)
    except Exception as error:
        raise ValueError(f"cannot load pickled model '{path}': {error}") from error
    if not callable(model):
        raise TypeError(
            f"'{path}' holds {type(model)}, not a model (a state dict needs 'module:factory')"
        )
    return model


def load_model(
    source: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
) -> Any:
    """Load a model for inference, in ``eval()`` mode on ``device``.

    Parameters
    ----------
    source : str or PathLike
        ``'demo'`` (the bundled network), a TorchScript file (``torch.jit.save``), a
        ``torch.export`` archive (``.pt2``), or ``'package.module:factory'`` (a callable
        returning an ``nn.Module``).
    weights : str or PathLike, optional
        A state dict to load into a factory's model (read with ``weights_only=True``).
    device : str or torch.device, optional
        Where to put the model (default CPU).
    trust_pickle : bool
        Allow a pickled full model; never needed for TorchScript, ``.pt2`` or state dicts.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        Missing files, unreadable or untrusted files, bad factories; messages name the source.

    Examples
    --------
    >>> model = load_model("demo")
    >>> type(model).__name__
    'TinyUNet3D'
    """
    target = _device(device)
    text = os.fspath(source)
    if text == DEMO:
        text = "napari_patchwork.models:demo_model"
    path = Path(text)
    if ":" in text and not path.exists():
        model = _from_factory(text)
    else:
        if not path.exists():
            raise FileNotFoundError(f"model file does not exist: '{path}'")
        if path.is_dir():
            raise ValueError(f"model path is a directory: '{path}'")
        model = _from_file(path, target, trust_pickle)
    if weights is not None:
        if not hasattr(model, "load_state_dict"):
            raise TypeError(f"weights given but the model from '{source}' has no load_state_dict")
        try:
            state = torch.load(os.fspath(weights), map_location=target, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"weights file does not exist: '{weights}'") from None
        except Exception as error:
            raise ValueError(
                f"cannot load weights '{weights}' safely (weights_only=True): {error}"
            ) from error
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:  # wrong keys or shapes
            first = str(error).strip().splitlines()
            raise ValueError(
                f"weights '{weights}' do not fit the model from '{source}': "
                + " ".join(line.strip() for line in first[:3])
            ) from error
    return _ready(model, target)


def _ready(model: Any, device: torch.device) -> Any:
    """Move to ``device`` and switch to eval mode where the model supports it.

    ``torch.export`` modules refuse ``eval()`` (they keep the mode they were exported in).
    """
    for method, arguments in (("to", (device,)), ("eval", ())):
        try:
            result = getattr(model, method)(*arguments) if hasattr(model, method) else model
        except (NotImplementedError, RuntimeError):
            continue
        model = result if method == "to" and result is not None else model
    return model


# ---------------------------------------------------------------------- saved models
METADATA_NAME = "patchwork.json"  # extra file of our TorchScript archives
METADATA_FORMAT = "napari-patchwork-model"


def save_model(
    model: Any,
    path: str | os.PathLike[str],
    *,
    class_values: Any,
    example_input: torch.Tensor,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as a ``torch.export`` archive carrying its class values.

    TorchScript is deprecated by torch, so trained models are exported with
    ``torch.export`` (batch and spatial sizes dynamic where the model allows it; spatial sizes
    even). The archive holds ``patchwork.json``, read back by :func:`read_model_metadata`
    without loading the model: output channel ``c`` is class ``class_values[c]``, the value
    that ``infer --labels`` and the Tiled inference widget write. :func:`load_model` loads the
    file whatever its suffix (``.pt2`` is the convention); nothing is unpickled.

    Parameters
    ----------
    model : torch.nn.Module
        The network (a CPU copy in eval mode is exported; ``model`` is left as it is).
    path : str or PathLike
        Where to write (an existing file is replaced atomically).
    class_values : sequence of int
        One label value per output channel, distinct and >= 0.
    example_input : torch.Tensor
        A ``(B, C, P, P, P)`` input the model accepts (e.g. one training patch).
    metadata : dict, optional
        More JSON-serialisable values to store (patch size, normalisation, …).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        If the model cannot be exported, or ``path`` is a directory.

    Examples
    --------
    >>> import tempfile
    >>> from napari_patchwork.models import TinyUNet3D
    >>> path = save_model(TinyUNet3D(1, 2, width=2), tempfile.mkdtemp() + "/m.pt2",
    ...                   class_values=[1, 2], example_input=torch.zeros(1, 1, 8, 8, 8))
    >>> model = load_model(path)
    >>> read_model_metadata(path)["class_values"], model(torch.zeros(3, 1, 6, 6, 6)).shape
    ([1, 2], torch.Size([3, 2, 6, 6, 6]))
    """
    values = check_class_values(class_values, "class_values")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model)}")
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"model path is a directory: '{target}'")
    first = example_input.detach().float().cpu()[:1]
    program = _export(_cpu_copy(model), torch.cat([first, first]))  # batch 2: not specialised
    info = {"format": METADATA_FORMAT, "version": 1, "class_values": values, **(metadata or {})}
    temporary = target.with_name(f".{target.name}.partial.pt2")
    torch.export.save(program, str(temporary), extra_files={METADATA_NAME: json.dumps(info)})
    os.replace(temporary, target)
    return target


def _export(model: torch.nn.Module, example: torch.Tensor) -> Any:
    """Export with dynamic batch and even spatial sizes, else dynamic batch, else static."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    spatial = {axis: 2 * Dim(f"half{axis}", min=2, max=4096) for axis in (2, 3, 4)}
    error: Exception | None = None
    for shapes in ({0: batch, **spatial}, {0: batch}, None):
        try:
            dynamic = None if shapes is None else ({**shapes},)
            with torch.no_grad():
                return torch.export.export(model, (example,), dynamic_shapes=dynamic)
        except Exception as failure:  # constraints the model cannot meet: try the next
            error = failure
    raise ValueError(f"the model cannot be exported with torch.export: {error}") from error


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    duplicate = copy.deepcopy(model).cpu().eval()
    for tensor in [*duplicate.parameters(), *duplicate.buffers()]:  # plain strides to export
        tensor.data = tensor.data.contiguous()
    return duplicate


def check_class_values(values: Any, name: str) -> list[int]:
    """``values`` as a list of distinct ints >= 0, or an error naming ``name``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of int label values, got {values!r}")
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must hold ints >= 0, got {value!r} in {list(values)}")
        checked.append(int(value))
    if not checked or len(set(checked)) != len(checked):
        raise ValueError(f"{name} must be non-empty and distinct, got {checked}")
    return checked


def read_model_metadata(source: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``patchwork.json`` of a TorchScript file saved by :func:`save_torchscript`.

    Read from the zip archive directly: nothing is unpickled and no model code is loaded.
    Returns None for other sources (``'demo'``, ``module:factory``, files without it).

    Raises
    ------
    ValueError
        If the metadata exists but is not valid (names the file).
    """
    path = Path(os.fspath(source))
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"extra/{METADATA_NAME}")]
        if not names:
            return None
        text = archive.read(names[0]).decode("utf-8")
    try:
        info = json.loads(text)
        info["class_values"] = check_class_values(info.get("class_values"), "class_values")
    except (ValueError, TypeError) as error:
        raise ValueError(f"model file '{path}' has invalid {METADATA_NAME}: {error}") from None
    return dict(info)


def model_class_values(source: str | os.PathLike[str]) -> list[int] | None:
    """The label value of each output channel of a saved model, or None if not recorded.

    Examples
    --------
    >>> model_class_values("demo") is None
    True
    """
    info = read_model_metadata(source)
    return None if info is None else list(info["class_values"])


def model_patch_size(source: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """The patch size a saved model was trained with, or None if not recorded (see
    :func:`napari_patchwork.core.inference.grid.fit_patch` for the patch it runs with).

    Examples
    --------
    >>> model_patch_size("demo") is None
    True
    """
    info = read_model_metadata(source)
    size = None if info is None else info.get("patch_size")
    if not isinstance(size, list) or len(size) != 3:
        return None
    return (int(size[0]), int(size[1]), int(size[2]))


def apply_class_values(indices: torch.Tensor, class_values: Any) -> torch.Tensor:
    """Map class indices (argmax of the channels) to the saved label values.

    The result has the smallest unsigned dtype holding the values (uint8 up to 255).

    Examples
    --------
    >>> apply_class_values(torch.tensor([0, 1, 1, 0]), [1, 2]).tolist()
    [1, 2, 2, 1]
    """
    values = check_class_values(class_values, "class_values")
    top = max(values)
    dtype = torch.uint8 if top <= 255 else torch.int32 if top < 2**31 else torch.int64
    lookup = torch.tensor(values, dtype=torch.int64, device=indices.device)
    if indices.numel() and int(indices.max()) >= len(values):
        raise ValueError(
            f"the model has more output channels than class_values ({len(values)}: {values})"
        )
    return lookup[indices.long()].to(dtype)
