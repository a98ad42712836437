"""What the first optimizer updates do to a freshly initialised model, and which parameters do it.

Built to explain a finding of the scaling study (docs/results/scaling-small/README.md): E42 at 200M
(width 1776) jumps to a loss of 13-15 nats after its first Schedule-Free AdamW step on the GPU, sits
on the unigram plateau for ~100 steps and ends worse than E42 at 20M. This script reproduces such a
jump on the CPU at the same width with few layers, and takes it apart:

- ``loss``: the loss of one fixed held-out batch before the first update and after each of ``--steps``
  updates (training batches drawn from the data with a seeded generator; the optimizer and its
  settings are `elmanlab train`'s: ``elmanlab.step.make_optimizer``).
- ``blame`` (``--blame``): after the first update, the held-out loss with only one group of parameters
  updated (the rest as initialised), and with every group updated but that one. The group whose update
  alone reproduces the jump is its cause.
- ``out_proj_input``: at initialisation, each layer's input to its out_proj: its root mean square and
  its ``coherence`` (the mean over channels of |channel mean| / channel RMS, over batch and time).
  Near 0, the channels are centred and a sign-like first Adam step on out_proj adds outputs that
  mostly cancel (they grow as sqrt(width)); near 1, every channel has the same sign on every
  position, and the step adds a constant vector to the residual stream that grows with the width.

    python3 benchmarks/first_update.py --model e42 --dim 1776 --depth 2 --blame \
        --data .data/corpus-slice-32M.txt.zst --out benchmarks/results/first-update-e42-1776x2.json

Prints a table and writes the JSON (the settings, the numbers, torch's version, the commit).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys

import numpy as np
import torch
from tqdm import tqdm

from _harness import save_json
from elmanlab.config import ModelConfig, TrainConfig
from elmanlab.data import open_bytes, resolve_data_path
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import source_info
from elmanlab.lm import LM
from elmanlab.step import make_optimizer

GROUPS = ("embed", "head", "in_proj", "out_proj", "norm")      # by name; anything else by its last part


def group_of(name: str) -> str:
    for g in GROUPS:
        if g in name.split("."):
            return g
    return name.split(".")[-2] if name.endswith(".weight") and name.count(".") > 2 else name.split(".")[-1]


@contextlib.contextmanager
def kept_buffers(lm: LM):
    """Buffers as they were after the block: a forward in training mode moves some (the power
    iteration of a spectral-norm bound), and a measurement must not change what it measures."""
    bufs = {n: b.detach().clone() for n, b in lm.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in lm.named_buffers():
                b.copy_(bufs[n])


def out_lin(blk) -> tuple[str, torch.nn.Linear] | tuple[None, None]:
    """A block's residual-branch output projection and its attribute name (out_proj, or o_proj)."""
    for attr in ("out_proj", "o_proj"):
        lin = getattr(blk.layer, attr, None)
        if isinstance(lin, torch.nn.Linear):
            return attr, lin
    return None, None


def out_proj_inputs(lm: LM, x: torch.Tensor, keep: dict | None = None) -> list[dict]:
    """Each layer's input to its out_proj at this point: RMS and coherence (see the module text);
    with ``keep``, the inputs themselves too ([positions, channels] by layer index)."""
    rows, hooks = [], []
    for i, blk in enumerate(lm.blocks):
        _, lin = out_lin(blk)
        if lin is None:
            continue

        def hook(mod, inp, out, i=i):
            y = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            if keep is not None:
                keep[i] = y
            rms_c = y.pow(2).mean(0).sqrt().clamp_min(1e-12)
            rows.append({"layer": i, "rms": round(y.pow(2).mean().sqrt().item(), 4),
                         "coherence": round((y.mean(0).abs() / rms_c).mean().item(), 4)})
        hooks.append(lin.register_forward_hook(hook))
    with torch.no_grad(), kept_buffers(lm):
        lm(x)
    for h in hooks:
        h.remove()
    return rows


def out_proj_update(lm: LM, before: dict, ys: dict) -> list[dict]:
    """What the first update of each layer's out_proj adds to the branch output, on the held-out batch's
    out_proj inputs at init: its RMS, the RMS of the branch output at init for scale, and its
    ``position coherence``, |mean over positions| / RMS over positions of the added vector (1: the same
    vector at every position; ~1/sqrt(positions) for unrelated ones)."""
    rows = []
    for i, blk in enumerate(lm.blocks):
        attr, lin = out_lin(blk)
        name = f"blocks.{i}.layer.{attr}.weight"
        if lin is None or i not in ys or name not in before:
            continue
        w0 = before[name].float()
        delta = ys[i] @ (lin.weight.detach().float() - w0).T          # [positions, dim]
        out0 = ys[i] @ w0.T
        rms = delta.pow(2).sum(1).mean().sqrt()
        rows.append({"layer": i, "added_rms": round(delta.pow(2).mean().sqrt().item(), 5),
                     "init_output_rms": round(out0.pow(2).mean().sqrt().item(), 5),
                     "position_coherence": round((delta.mean(0).norm() / rms.clamp_min(1e-12)).item(), 4)})
    return rows


@torch.no_grad()
def w_h_norms(lm: LM) -> list[float]:
    """Each layer's largest singular value of W_h as its forward uses it (after a spectral norm), for the
    layers that have one (the Elman family)."""
    out = []
    with kept_buffers(lm):                  # a spectral norm's power iteration moves its buffers
        for blk in lm.blocks:
            get = getattr(blk.layer, "_W_h", None)
            if callable(get):
                out.append(round(torch.linalg.matrix_norm(get().detach().float(), ord=2).item(), 4))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="e42", help="model family (default e42)")
    ap.add_argument("--dim", type=int, default=1776, help="width (default 1776: E42 at 200M)")
    ap.add_argument("--depth", type=int, default=2, help="blocks (default 2: the jump needs width, not depth)")
    ap.add_argument("--options", default="{}", help='family options as JSON, e.g. \'{"init": "reference"}\'')
    ap.add_argument("--norm", default="rms", help="the wrapper's norms: rms (the lab's) or layer (the reference's "
                                                  "LayerNorm)")
    ap.add_argument("--tie-embeddings", action="store_true", help="tie the head to the embedding (the reference's "
                                                                   "runs did)")
    ap.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4, the studies')")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="weight decay (default 0.1)")
    ap.add_argument("--warmup", type=int, default=0, help="Schedule-Free warm-up steps (default 0, the studies')")
    ap.add_argument("--steps", type=int, default=3, help="updates to take (default 3)")
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per batch (default 4)")
    ap.add_argument("--seq-len", type=int, default=128, help="bytes per sequence (default 128)")
    ap.add_argument("--seed", type=int, default=42, help="initialisation seed (default 42)")
    ap.add_argument("--data", default=None, help="training text (default: the embedded corpus)")
    ap.add_argument("--blame", action="store_true", help="after the first update, which group's update moves the loss")
    ap.add_argument("--w-h-norm", type=int, default=0, metavar="N",
                    help="the Elman family: each layer's ||W_h||_2 (the recurrence as the forward uses it) at "
                         "initialisation and every N updates (default 0: not measured)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.seq_len < 2:
        ap.error("--steps and --batch-size take 1 or more, --seq-len 2 or more")
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError
    except ValueError:
        ap.error(f"--options takes a JSON object, e.g. '{{\"init\": \"reference\"}}', not {args.options!r}")
    try:
        buf = open_bytes(resolve_data_path(args.data), progress=False)
        torch.manual_seed(args.seed)
        lm = LM(ModelConfig(model=args.model, dim=args.dim, depth=args.depth, options=options or None,
                            norm=args.norm, tie_embeddings=args.tie_embeddings))
        opt = make_optimizer(lm, TrainConfig(model=lm.cfg, out="first-update", lr=args.lr,
                                             weight_decay=args.weight_decay, warmup_steps=args.warmup))
    except ElmanlabError as e:
        raise SystemExit(f"error: {e}")
    T, B = args.seq_len, args.batch_size
    if len(buf) < 4 * (T + 1):
        raise SystemExit(f"error: the data holds {len(buf)} bytes, too few for --seq-len {T}: give more text")
    gen = torch.Generator().manual_seed(0)

    def batch():
        starts = torch.randint(0, len(buf) - T - 1, (B,), generator=gen).tolist()
        idx = torch.from_numpy(np.stack([np.asarray(buf[s:s + T + 1], dtype=np.int64) for s in starts]))
        return idx[:, :-1], idx[:, 1:]

    held_x, held_y = batch()
    lm.train()
    opt.train()

    @torch.no_grad()
    def held_loss() -> float:
        with kept_buffers(lm):
            return round(lm(held_x, held_y)[1].item(), 4)

    ys: dict = {}
    init = out_proj_inputs(lm, held_x, ys)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    losses, train_losses, blame = [held_loss()], [], None
    norms = [{"update": 0, "w_h_norm": w_h_norms(lm)}] if args.w_h_norm > 0 else []
    if args.w_h_norm > 0 and not norms[0]["w_h_norm"]:
        raise SystemExit(f"error: --w-h-norm measures the Elman family's W_h; {args.model} has none")
    bar = tqdm(range(args.steps), desc=f"first updates of {args.model} {args.dim}x{args.depth}", unit="step",
               disable=args.steps < 5, file=sys.stderr)
    for step in bar:
        x, y = batch()
        _, loss = lm(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_losses.append(round(loss.item(), 4))
        if step == 0:
            update = out_proj_update(lm, before, ys)
        if step == 0 and args.blame:
            after = {n: p.detach().clone() for n, p in lm.named_parameters()}
            groups = sorted({group_of(n) for n in before})

            @torch.no_grad()
            def with_updated(keep) -> float:
                for n, p in lm.named_parameters():
                    p.copy_(after[n] if group_of(n) in keep else before[n])
                return held_loss()
            blame = {"all": with_updated(set(groups)), "none": with_updated(set()), "groups": [
                {"group": g, "only": with_updated({g}), "all_but": with_updated(set(groups) - {g}),
                 "max_change": float(max((after[n] - before[n]).abs().max() for n in before if group_of(n) == g))}
                for g in groups]}
            with_updated(set(groups))
        losses.append(held_loss())
        if args.w_h_norm > 0 and (step + 1) % args.w_h_norm == 0:
            norms.append({"update": step + 1, "w_h_norm": w_h_norms(lm)})
        bar.set_postfix_str(f"held-out loss {losses[-1]:.3f}")
    bar.close()

    rec = {"model": args.model, "dim": args.dim, "depth": args.depth, "options": options, "norm": args.norm,
           "tie_embeddings": args.tie_embeddings, "params": lm.num_params(),
           "lr": args.lr, "weight_decay": args.weight_decay, "warmup": args.warmup, "batch_size": B, "seq_len": T,
           "seed": args.seed, "data": args.data or "embedded corpus", "held_out_loss": losses,
           "train_loss": train_losses, "w_h_norm": norms, "blame": blame, "out_proj_input": init, "out_proj_update": update,
           "torch": torch.__version__, "python": platform.python_version(), "commit": source_info()["commit"]}
    coh = [r["coherence"] for r in init]
    wrapper = (" norm layer" if args.norm != "rms" else "") + (" tied head" if args.tie_embeddings else "")
    print(f"{args.model} {args.dim}x{args.depth} {options or ''}{wrapper} lr {args.lr:g} warm-up {args.warmup}: "
          f"{lm.num_params() / 1e6:.1f}M params; out_proj input at init: rms "
          f"{np.mean([r['rms'] for r in init]):.3f}, coherence {np.mean(coh):.3f} (mean over layers)")
    if update:
        print(f"out_proj's first update adds, per layer: rms {', '.join(str(r['added_rms']) for r in update)} "
              f"(its output at init: {', '.join(str(r['init_output_rms']) for r in update)}), "
              f"position coherence {', '.join(str(r['position_coherence']) for r in update)}")
    print("held-out loss after each update (0 = at init): "
          + ", ".join(f"{i}: {v:.3f}" for i, v in enumerate(losses)))
    if norms:
        print("||W_h||_2 by layer after each measured update: "
              + "; ".join(f"{r['update']}: {', '.join(f'{v:.3f}' for v in r['w_h_norm'])}" for r in norms))
    if blame:
        print(f"\nfirst update, held-out loss {blame['none']:.3f} -> {blame['all']:.3f}; by group:")
        print(f"{'group':<10} {'only it':>8} {'all but it':>11} {'max |change|':>13}")
        for g in blame["groups"]:
            print(f"{g['group']:<10} {g['only']:>8.3f} {g['all_but']:>11.3f} {g['max_change']:>13.2e}")
    if args.out:
        print()
        save_json(args.out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
