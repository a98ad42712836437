"""Train settings are declared once (elmanlab.config): the CLI flags, the study file's train keys
and the resume rules are generated from the TrainConfig declarations."""
import argparse
import dataclasses

import pytest

from elmanlab.cli import build_parser
from elmanlab.config import (TrainConfig, field_type, identity_settings, resumable_settings,
                             train_settings)
from elmanlab.errors import ElmanlabError


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


# flags of `elmanlab train` that are not train settings: the model and its size, where the run goes
NOT_SETTINGS = {"help", "model", "params", "dim", "depth", "mlp_ratio", "tie_embeddings", "norm", "out", "resume",
                "json"}


def test_every_setting_is_a_flag_and_every_flag_a_setting():
    settings = set(train_settings())
    assert settings == {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "out"}
    flags = {a.dest for a in _train_parser()._actions
             if a.dest not in NOT_SETTINGS and not a.dest.startswith("opt_")}
    assert flags == settings


def test_flags_take_their_default_and_help_from_the_declaration():
    actions = {a.dest: a for a in _train_parser()._actions}
    for name, f in train_settings().items():
        a = actions[name]
        assert a.default is None, name            # not given: TrainConfig's own default applies
        assert a.help.startswith(f.metadata["help"].replace("%", "%%")), name
        if f.default is not None and field_type(f) is not bool:
            assert f"(default {f.default!r}" in a.help or f"(default {f.default}" in a.help, name
        if field_type(f) is bool:
            assert isinstance(a, argparse.BooleanOptionalAction), name
        else:
            assert a.type is field_type(f), name


def test_parsed_flags_build_the_config():
    args = build_parser().parse_args(["train", "e1", "--lr", "1e-3", "--no-progress", "--grad-clip", "0.5",
                                      "--beta2", "0.95"])
    given = {k: getattr(args, k) for k in train_settings() if getattr(args, k) is not None}
    assert given == {"lr": 1e-3, "progress": False, "grad_clip": 0.5, "beta2": 0.95}
    from elmanlab.sizing import model_config
    cfg = TrainConfig(model=model_config("e1", dim=32, depth=1), out="x", steps=1, **given)
    assert cfg.lr == 1e-3 and cfg.beta2 == 0.95 and cfg.seq_len == 512


def test_roles_are_declared_per_setting():
    ident, res = set(identity_settings()), set(resumable_settings())
    assert {"lr", "batch_size", "seq_len", "seed", "steps", "minutes", "eval_bytes"} <= ident
    assert not ident & {"data", "val_data", "device", "cuda_graph", "checkpoint_every", "log_every", "progress"}
    assert res == {"steps", "minutes", "device", "cuda_graph", "allow_reference", "checkpoint_every", "progress",
                   "eval_every", "eval_train_weights", "keep_best", "tensorboard", "wandb"}
    assert "dropout" in ident and not ident & {"eval_every", "eval_train_weights", "keep_best", "tensorboard", "wandb"}
    for f in train_settings().values():
        assert f.metadata["help"] and f.metadata["group"]


def test_resume_rejects_a_setting_it_cannot_change(tmp_path):
    from elmanlab.train import resume_training
    with pytest.raises(ElmanlabError, match="takes lr from its config.json"):
        resume_training(tmp_path, lr=1e-3)
