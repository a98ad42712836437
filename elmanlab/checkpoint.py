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


def save_weights(model: torch.nn.Module, run_dir: Path, name: str = WEIGHTS_FILE) -> None:
    """The model's weights as ``run_dir/name`` (the final weights by default), written whole or not at all."""
    tmp = Path(run_dir) / (name + ".tmp")
    save_safetensors(model.state_dict(), tmp)
    os.replace(tmp, Path(run_dir) / name)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no space: the run's file is replaced, never rewritten in
    place), or a copy where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def restore_file(ckpt_dir: Path, run_dir: Path, name: str) -> None:
    """Make ``run_dir/name`` what the checkpoint kept of it (a copy), or absent when it kept none: a
    file written after the checkpoint belongs to steps the resumed run makes again."""
    src, dst = Path(ckpt_dir) / name, Path(run_dir) / name
    if src.is_file():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    elif dst.exists():
        dst.unlink()


def write_checkpoint(run_dir: Path, step: int, state: dict, model: torch.nn.Module, eval_weights,
                     extra_files: list[Path] = ()) -> bool:
    """Write checkpoint ``step`` of ``run_dir``: ``state`` as state.pt and ``model``'s weights, taken
    inside the ``eval_weights()`` context, as model.safetensors, and ``extra_files`` (e.g. the best
    weights) linked in under their names; then drop all but the newest checkpoints. False (and
    nothing written) when that step's checkpoint exists already."""
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
        for f in extra_files:
            _link_or_copy(Path(f), tmp / Path(f).name)
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


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu", which: str = "final"):
    """(model in eval mode with the run's evaluation weights, run config dict); ``which="best"``: the
    weights of the best held-out score (``--keep-best``)."""
    from safetensors.torch import load_file

    from elmanlab.hardware import resolve_device
    from elmanlab.lm import LM
    conf = load_run_config(run_dir)
    model = LM(ModelConfig.from_dict(conf["model"]))
    path = weights_path(run_dir, which)
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
    if (conf.get("train") or {}).get("precision") == "bf16":     # scored and sampled as it trained
        model.to(torch.bfloat16)
    return model.to(dev).eval(), conf
