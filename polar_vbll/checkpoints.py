"""Checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A checkpoint is a folder::

    config.json            what was trained and how (method, model, sizes, step)
    <name>.safetensors     one file per group of tensors (adapters, head, optimizer state ...)
    state.json             the non-tensor rest (history, optimizer hyper-parameters ...)

:func:`save_checkpoint` writes everything into a fresh temporary folder next to the target and
then swaps it in with renames, so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from polar_vbll.errors import CheckpointError, ConfigError


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed; ConfigError naming it when it cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create output folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"output folder {folder} is not writable; choose another --out")
    return folder


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file next to ``path``, then rename: readers never see half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def rounded(value, digits: int = 6):
    """``value`` (nested lists / dicts) with each float kept to ``digits`` significant digits:
    training logs (loss per step, singular values) stored at the precision anyone reads them."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    return value


def compact_json(value) -> str:
    """JSON without indentation or spaces (the committed runs' logs are most of their size)."""
    return json.dumps(value, separators=(",", ":"))


def save_checkpoint(folder: str | Path, tensors: dict[str, dict[str, torch.Tensor]],
                    config: dict, state: dict | None = None) -> Path:
    """Write ``tensors`` (file stem -> {key: tensor}), ``config`` and ``state`` atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    ensure_writable_folder(folder.parent)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.writing-"))
    try:
        for stem, group in tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in group.items()},
                      str(staging / f"{stem}.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (staging / "state.json").write_text(compact_json(state or {}))
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """Read a folder written by :func:`save_checkpoint`: (tensors, config, state)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: config.json is missing")
    try:
        config = json.loads((folder / "config.json").read_text())
        state_path = folder / "state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{folder}: a JSON file is corrupt ({error})") from None
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            tensors[path.stem] = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    return tensors, config, state


def method_profile(config: dict, folder: str | Path):
    """The :class:`~polar_vbll.profiles.Profile` of a method checkpoint's ``config`` (written by
    ``Method.save``); CheckpointError when the config is not one."""
    from polar_vbll.profiles import Profile

    if "method" not in config:
        raise CheckpointError(f"{folder}/config.json has no 'method' entry; not a method "
                              "checkpoint")
    missing = sorted({"model", "seed", "profile", "options"} - set(config))
    if missing:
        raise CheckpointError(f"{folder}/config.json lacks {missing}; expected the config "
                              "written by Method.save")
    try:
        return Profile(**config["profile"])
    except TypeError as error:
        raise CheckpointError(f"{folder}/config.json: 'profile' does not match the "
                              f"Profile fields ({error})") from None


def load_into_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict`` with a CheckpointError naming keys and shapes on mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{what}: the checkpoint does not match the model; missing keys "
                              f"{missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{what}: tensor {key!r} has shape {tuple(value.shape)} in the "
                                  f"checkpoint but {tuple(expected[key].shape)} in the model")
    module.load_state_dict(tensors)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON-able values."""
    state_dict = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for index, values in state_dict["state"].items():
        plain["state"][str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                plain["state"][str(index)][key] = value
    return tensors, plain


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict,
                           plain: dict) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state = {int(index): dict(values) for index, values in plain["state"].items()}
    for key, value in tensors.items():
        if not key.startswith(prefix + "."):
            continue
        index, name = key[len(prefix) + 1:].split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
