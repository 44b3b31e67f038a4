"""Loading models safely: TorchScript, ``torch.export`` archives, or ``module:factory``.

Pickled full models (``torch.save(model)``) can run arbitrary code when loaded, so they are
refused unless ``trust_pickle=True``; weight files (state dicts) load with
``weights_only=True``, which unpickles tensors and plain containers only.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from pathlib import Path
from typing import Any

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


def _from_file(path: Path, device: torch.device, trust_pickle: bool) -> Any:
    if path.suffix == ".pt2":
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
