"""The ``train``, ``eval`` and ``generate`` subcommands."""
from __future__ import annotations

import argparse
import math
import sys
import time

from elmanlab.cli import add_model_arguments, model_config_from_args, print_json
from elmanlab.errors import ElmanlabError

DEFAULT_PARAMS = "1M"
DEFAULT_STEPS = 300


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model (or continue one with --resume)",
        description="Train a byte-level LM with Schedule-Free AdamW on a byte stream. Without --data the "
                    "embedded corpus (complete works of Shakespeare, 5 MB) is used; without a size, "
                    f"--params {DEFAULT_PARAMS}; without a budget, --steps {DEFAULT_STEPS}. Under "
                    "`torchrun --nproc_per_node=N -m elmanlab train ...` it trains data parallel. "
                    "`elmanlab train --resume DIR` continues a run from its newest checkpoint.")
    p.add_argument("model", nargs="?", help="model family (see `elmanlab models`); not with --resume")
    add_model_arguments(p, with_model=False)
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="training bytes: any file, or .zst (decompressed once to a "
                   "cache); default: the embedded Shakespeare corpus")
    d.add_argument("--val-data", metavar="PATH", help="validation bytes; default: hold out the last 10%% "
                   "(at most 8 MiB) of --data, which training never samples")
    b = p.add_argument_group("budget (one of)")
    b.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULT_STEPS} when no budget is given)")
    b.add_argument("--minutes", type=float, help="minutes of training time (the warm-up (the first step; with "
                   "--cuda-graph the first two), checkpointing and evaluation are timed apart and not charged)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=16, help="global batch: sequences per step over all ranks (default 16)")
    o.add_argument("--seq-len", type=int, default=512, help="bytes per sequence; windows are seq_len + 1 (default 512)")
    o.add_argument("--lr", type=float, default=3e-4, help="Schedule-Free AdamW learning rate (default 3e-4)")
    o.add_argument("--weight-decay", type=float, default=0.1, help="weight decay, on matrices only (default 0.1)")
    o.add_argument("--warmup-steps", type=int, default=0, help="Schedule-Free linear warm-up steps (default 0)")
    o.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm (default: off)")
    o.add_argument("--max-nonfinite", type=int, default=10,
                   help="non-finite steps (each skipped) in a row before the run stops (default 10)")
    o.add_argument("--seed", type=int, default=42, help="seeds the initial weights and the data stream (default 42)")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is timed apart)")
    r.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="after one eager step, capture forward + backward as one CUDA graph and replay it "
                        "every step: the same kernels without per-kernel launch overhead, for host-bound "
                        "steps (small batches); CUDA, one process, not with --compile; the optimizer stays "
                        "eager. Default off; with --resume, the run's own setting unless given")
    r.add_argument("--out", metavar="DIR", help="run folder (default runs/MODEL-PARAMS-TIMESTAMP)")
    r.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint to its "
                   "budget (or a new --steps/--minutes); everything else comes from DIR/config.json")
    r.add_argument("--checkpoint-every", type=int, default=None,
                   help="write a checkpoint every N steps (last two kept; needed for --resume); default 0: none")
    r.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl lines (default 10)")
    r.add_argument("--eval-bytes", type=int, default=None,
                   help="held-out bytes scored at the end (default 262144; 0: skip)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    # settings a resumed run takes from its config.json: giving one with --resume is an error
    _RUN_SETTINGS.update({d: p.get_default(d) for d in (
        "batch_size", "seq_len", "lr", "weight_decay", "warmup_steps", "grad_clip", "max_nonfinite", "seed",
        "compile", "out", "log_every", "eval_bytes")})
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out loss of a run in nats/byte and bits/byte",
                       description="Score a run's weights on held-out bytes: the first --bytes bytes "
                                   "(default 262144) of its validation stream (or of --data), in windows of "
                                   "the run's seq_len + 1 overlapping by one byte, each from a zero state. "
                                   "Deterministic. Without --data, summary.json gets val_loss / val_bpb.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (the --out of `elmanlab train`)")
    p.add_argument("--data", metavar="PATH", help="score this file instead of the run's validation bytes")
    p.add_argument("--bytes", type=int, default=262_144, help="bytes to score, fewer if the data is shorter (default 262144)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: the run's batch)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a run, byte by byte, as it comes",
                       description="Stream bytes from a trained run through the recurrent state (one step per "
                                   "byte, constant memory). Invalid UTF-8 is printed with replacement characters.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (the --out of `elmanlab train`)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start after a newline)")
    p.add_argument("--max-bytes", type=int, default=500, help="bytes to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely bytes only")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: same seed, same text (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_generate)


# ---------------------------------------------------------------- train

_RUN_SETTINGS: dict = {}      # dest -> parser default, filled by register()


def _resume_clashes(args) -> list[str]:
    """The flags given with --resume that a resumed run takes from its config.json instead."""
    given = [k for k in ("params", "dim", "depth", "data", "val_data") if getattr(args, k) is not None]
    given += [k for k, default in _RUN_SETTINGS.items() if getattr(args, k, default) != default]
    given += [k[4:] for k, v in vars(args).items() if k.startswith("opt_") and v is not None]
    if args.mlp_ratio:
        given.append("mlp_ratio")
    if args.tie_embeddings:
        given.append("tie_embeddings")
    if args.model:
        given.insert(0, "MODEL")
    return ["--" + g.replace("_", "-") if g != "MODEL" else g for g in given]


def cmd_train(args) -> int:
    from elmanlab.train import TrainConfig, resume_training, run_training
    if args.resume:
        clash = _resume_clashes(args)
        if clash:
            raise ElmanlabError(f"--resume takes the model, data and settings from the run's config.json; "
                                f"drop {', '.join(clash)}")
        if args.steps is not None and args.minutes is not None:
            raise ElmanlabError("give at most one budget: --steps N or --minutes M")
        summary = resume_training(args.resume, steps=args.steps, minutes=args.minutes,
                                  device=None if args.device == "auto" else args.device,
                                  progress=False if args.no_progress else None,
                                  checkpoint_every=args.checkpoint_every, cuda_graph=args.cuda_graph)
    else:
        if not args.model:
            raise ElmanlabError("name a model to train (e.g. `elmanlab train e1`; see `elmanlab models`) "
                                "or continue a run with --resume DIR")
        if args.params is None and args.dim is None:
            args.params = DEFAULT_PARAMS
        cfg_model = model_config_from_args(args)
        steps, minutes = args.steps, args.minutes
        if steps is None and minutes is None:
            steps = DEFAULT_STEPS
        if steps is not None and minutes is not None:
            raise ElmanlabError("give exactly one budget: --steps N or --minutes M")
        out = args.out or f"runs/{cfg_model.model}-{(args.params or f'd{args.dim}').lower()}-" \
                          f"{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = TrainConfig(
            model=cfg_model, out=out, data=args.data, val_data=args.val_data, steps=steps, minutes=minutes,
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, seed=args.seed, device=args.device,
            compile=args.compile, cuda_graph=bool(args.cuda_graph), checkpoint_every=args.checkpoint_every or 0, log_every=args.log_every,
            eval_bytes=262_144 if args.eval_bytes is None else args.eval_bytes,
            max_nonfinite=args.max_nonfinite, progress=not args.no_progress)
        summary = run_training(cfg)
    if int(_env("RANK", "0")) != 0:
        return 0
    if args.json:
        print_json(summary)
    else:
        print_summary(summary)
    if summary.get("status") == "stopped_nonfinite":
        raise ElmanlabError(f"the run stopped at step {summary['steps']} after repeated non-finite losses or "
                            f"gradients; lower --lr or set --grad-clip (recorded in {summary['run_dir']}/summary.json)")
    return 0


def _env(k, d):
    import os
    return os.environ.get(k, d)


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_summary(s: dict) -> None:
    from elmanlab.sizing import format_count
    w = sys.stdout.write
    w(f"run          {s.get('run_dir')}  ({s.get('status')})\n")
    w(f"model        {s['model']}  {format_count(s['params'])} params  dim {s['dim']} x depth {s['depth']}"
      f"  on {s['device']}" + (f" x{s['world_size']}" if s.get("world_size", 1) > 1 else "") + "\n")
    w(f"trained      {s['steps']:,} steps, {s['tokens']:,} bytes in {_fmt(s.get('train_s'), '.1f')} s"
      f" (+ {_fmt(s.get('warmup_s'), '.1f')} s warm-up steps), wall {_fmt(s.get('wall_s'), '.1f')} s\n")
    w(f"loss         {_fmt(s.get('loss_last100'), '.4f')} nats/byte (mean of last 100 steps), "
      f"final {_fmt(s.get('final_loss'), '.4f')}\n")
    if s.get("val_bpb") is not None:
        w(f"validation   {s['val_loss']:.4f} nats/byte = {s['val_bpb']:.4f} bits/byte "
          f"over {s['val_bytes']:,} held-out bytes\n")
    mfu = f", MFU {100 * s['mfu']:.1f}%" if s.get("mfu") else ""
    w(f"speed        {_fmt(s.get('tokens_per_s'), ',.0f')} bytes/s{mfu}, peak memory "
      f"{_fmt(s.get('peak_memory_gb'), '.2f')} GB\n")
    if s.get("nonfinite_steps"):
        w(f"non-finite   {s['nonfinite_steps']} steps skipped\n")


# ---------------------------------------------------------------- eval, generate

def cmd_eval(args) -> int:
    from elmanlab.evaluate import evaluate_run
    if args.batch_size is not None and args.batch_size < 1:
        raise ElmanlabError(f"--batch-size must be >= 1, got {args.batch_size}")
    res = evaluate_run(args.run_dir, data=args.data, eval_bytes=args.bytes, device=args.device,
                       batch_size=args.batch_size)
    if args.json:
        print_json(res)
        return 0
    print(f"run          {res['run']}")
    print(f"data         {res['source']}")
    print(f"scored       {res['val_bytes']:,} bytes (windows of {res['seq_len']} + 1) in {res['eval_s']:.1f} s")
    print(f"loss         {res['val_loss']:.4f} nats/byte")
    print(f"bits/byte    {res['val_bpb']:.4f}")
    return 0


def cmd_generate(args) -> int:
    from elmanlab.generate import check_sampling, generate, print_stream
    from elmanlab.train import load_model
    check_sampling(args.max_bytes, args.temperature, args.top_k)
    model, _ = load_model(args.run_dir, args.device)
    prompt = args.prompt.encode("utf-8", errors="surrogateescape")
    try:
        print_stream(prompt.decode("utf-8", errors="replace"))
        generate(model, prompt, args.max_bytes, args.temperature, args.top_k, args.seed, write=print_stream)
        print_stream("\n")
    except BrokenPipeError:                     # e.g. `elmanlab generate ... | head`
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
