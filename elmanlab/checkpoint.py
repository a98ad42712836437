"""Weights and checkpoints on disk: saving and restoring a trainer's state, and ``load_model``.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding the evaluation weights
(``model.safetensors``, what eval and generate load) and ``state.pt`` (the train-mode weights, the
optimizer, the data position, the counters and the RNG states: everything a resumed run needs to
continue bit for bit). It is written to a temporary folder and renamed, so a checkpoint folder
appears only complete; the newest ``KEEP_CHECKPOINTS`` are kept.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from elmanlab.config import ModelConfig
from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import make_public
from elmanlab.runs import (CHECKPOINT_DIR, CHECKPOINT_STATE, WEIGHTS_FILE, checkpoint_name, list_checkpoints,
                           load_run_config, weights_path)

KEEP_CHECKPOINTS = 2


def save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path))


def save_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """The run's final weights, ``model.safetensors``, written whole or not at all."""
    tmp = Path(run_dir) / (WEIGHTS_FILE + ".tmp")
    save_safetensors(model.state_dict(), tmp)
    os.replace(tmp, Path(run_dir) / WEIGHTS_FILE)


def write_checkpoint(run_dir: Path, step: int, state: dict, model: torch.nn.Module, eval_weights) -> bool:
    """Write checkpoint ``step`` of ``run_dir``: ``state`` as state.pt and ``model``'s weights, taken
    inside the ``eval_weights()`` context, as model.safetensors; then drop all but the newest
    checkpoints. False (and nothing written) when that step's checkpoint exists already."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    if final.exists():
        return False
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    make_public(tmp, directory=True)
    try:
        torch.save(state, tmp / CHECKPOINT_STATE)
        with eval_weights():
            save_safetensors(model.state_dict(), tmp / WEIGHTS_FILE)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return True


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Folders of checkpoints cut short by a kill (never renamed into place)."""
    for junk in (Path(run_dir) / CHECKPOINT_DIR).glob(".step_*"):
        shutil.rmtree(junk, ignore_errors=True)


def read_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """(path, state) of the newest complete checkpoint of ``run_dir``, read on the CPU."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise ElmanlabError(f"{run_dir} has no complete checkpoint to resume from; "
                            f"runs are resumable when trained with --checkpoint-every N")
    path = ckpts[-1] / CHECKPOINT_STATE
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ElmanlabError(f"cannot read checkpoint {path}: {e}") from None


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode with the run's evaluation weights, run config dict)."""
    from safetensors.torch import load_file

    from elmanlab.hardware import resolve_device
    from elmanlab.lm import LM
    conf = load_run_config(run_dir)
    model = LM(ModelConfig.from_dict(conf["model"]))
    path = weights_path(run_dir)
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise ElmanlabError(f"cannot read weights {path}: {e}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:                              # a tensor of another shape
        raise ElmanlabError(f"weights {path} do not match the model in config.json: "
                            f"{str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ElmanlabError(f"weights {path} do not match the model in config.json "
                            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(dev).eval(), conf
