"""Where a gap between training loss and held-out loss comes from: the data, or Schedule-Free's averaging.

Built for a disagreement in the scaling study (docs/results/scaling-small/README.md): at 100M the
Transformer is behind Mamba2 in training loss but ahead in held-out bits/byte. The training loss is
measured with the weights being trained (Schedule-Free's y) on training batches; the held-out score
with the average x on the validation file. This script trains one model (`elmanlab train`'s Trainer and
settings) and scores four ways after the last step: {the validation file, unread bytes of the training
file} x {x, y}. "Unread" bytes are a window from the middle of the training split, which a short run's
random windows almost never cover.

A fifth number checks the measurement itself: the next training batch is scored in evaluation mode
with y (as a held-out score is made), then trained on by the Trainer's own step, whose reported loss
is computed with the same weights before the update (the path every training loss takes: the fast
kernels and, on a GPU, the CUDA graph). ``next_batch_train - next_batch_eval`` is then only the two
paths' numerical difference; a large one would mean the training loss and the held-out score measure
different things. ``--device cuda`` runs it all on the GPU with the fast kernels (the CPU has only the
references), where the scaling study's disagreement was seen:

    python3 benchmarks/heldout_gap.py --model mamba2 --params 20M --steps 2000 --seq-len 512 --device cuda \
        --data .data/corpus-slice-32M.txt.zst --val-data .data/corpus-val.txt.zst \
        --out benchmarks/results/heldout-gap/mamba2-20M-gpu.json

    python3 benchmarks/heldout_gap.py --model mamba2 --params 2M --steps 600 \\
        --data .data/corpus-slice-32M.txt.zst --val-data .data/corpus-val.txt.zst \\
        --out benchmarks/results/heldout-gap/mamba2-2M.json

Prints the four scores and writes them, with the settings, to JSON.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from _harness import save_json
from elmanlab.config import TrainConfig
from elmanlab.errors import ElmanlabError
from elmanlab.evaluate import evaluate_bytes
from elmanlab.hardware import autocast, resolve_device
from elmanlab.sizing import solve
from elmanlab.train import Trainer
from elmanlab.validation import score_as_trained


def score_rows(model, x: torch.Tensor) -> float:
    """The mean next-byte loss (nats) of the rows of ``x`` [B, T+1], in evaluation mode with the
    weights as they are, autocast as in every held-out score."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(x.device, model=model):
            logits, _ = model(x[:, :-1])
        return float(torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                       x[:, 1:].reshape(-1)))
    finally:
        model.train(was)


def run(args) -> dict:
    mc = solve(args.model, args.params)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=mc, out=str(Path(tmp) / "run"), data=args.data, val_data=args.val_data,
                          steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                          seed=args.seed, eval_bytes=args.eval_bytes, device=str(device), progress=False)
        tr = Trainer(cfg)
        try:
            t0 = time.time()
            losses = [tr.train_step()[0] for _ in tqdm(range(args.steps), desc=f"train {args.model}", unit="step",
                                                       mininterval=2.0, file=sys.stderr)]
            train_s = time.time() - t0
            mid = len(tr.split.train) // 2
            unread = np.asarray(tr.split.train[mid: mid + args.eval_bytes + 1])
            sets = {"val": tr.split.val, "train_unread": unread}

            how = (args.seq_len, args.eval_bytes, args.batch_size, tr.device)
            out = {f"y_{k}": score_as_trained(tr.model, v, *how)["val_loss"] for k, v in sets.items()}
            with tr.eval_weights():                          # x, in eval mode (as every held-out score)
                out.update({f"x_{k}": evaluate_bytes(tr.model, v, *how)["val_loss"] for k, v in sets.items()})
            nxt, _ = tr.batch()                                 # the batch the next step trains on
            out["next_batch_eval"] = score_rows(tr.model, nxt)
            out["next_batch_train"] = tr.train_step()[0]       # its loss, with the same weights, before the update
            kernel = tr.kernel()
        finally:
            tr.close()
    return {"model": args.model, "params": tr.n_params, "dim": mc.dim, "depth": mc.depth, "steps": args.steps,
            "train_loss_last100": float(np.mean(losses[-100:])), **out, "train_s": round(train_s, 1),
            "settings": {k: getattr(args, k) for k in ("batch_size", "seq_len", "lr", "seed", "eval_bytes",
                                                       "data", "val_data")},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "kernel": kernel,
            "torch": torch.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model family (elmanlab models)")
    ap.add_argument("--params", default="2M", help="parameter target (default 2M)")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    ap.add_argument("--seq-len", type=int, default=128, help="bytes per sequence (default 128)")
    ap.add_argument("--lr", type=float, default=3e-4, help="Schedule-Free AdamW learning rate (default 3e-4)")
    ap.add_argument("--seed", type=int, default=42, help="the run's seed (default 42)")
    ap.add_argument("--eval-bytes", type=int, default=300_000, help="bytes scored in each set (default 300000)")
    ap.add_argument("--data", help="training bytes (default: the embedded corpus)")
    ap.add_argument("--val-data", help="validation bytes (default: the last 10%% of --data)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: where to train and score "
                                                    "(cuda: the fast kernels and CUDA graphs of a GPU run)")
    ap.add_argument("--out", help="write the result to this JSON file")
    args = ap.parse_args(argv)
    try:
        if args.steps < 1:
            raise ElmanlabError(f"--steps must be at least 1, got {args.steps}")
        res = run(args)
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{res['model']} {res['params']:,} params, {res['steps']} steps: training loss (last 100, y) "
          f"{res['train_loss_last100']:.4f}")
    print(f"{'':>14} {'x (average)':>12} {'y (trained)':>12}")
    for k in ("val", "train_unread"):
        print(f"{k:>14} {res['x_' + k]:>12.4f} {res['y_' + k]:>12.4f}")
    print(f"next training batch, y: the training step's loss {res['next_batch_train']:.4f}, scored in evaluation "
          f"mode {res['next_batch_eval']:.4f} (difference {res['next_batch_train'] - res['next_batch_eval']:+.5f})")
    if args.out:
        save_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
