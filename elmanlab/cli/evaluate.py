"""`elmanlab eval`: held-out loss of a run in nats/byte and bits/byte."""
from __future__ import annotations

from elmanlab.cli.common import print_json
from elmanlab.config import DEFAULT_EVAL_BYTES
from elmanlab.errors import ElmanlabError
from elmanlab.runs import WEIGHT_CHOICES


def register(sub) -> None:
    p = sub.add_parser("eval", help="held-out loss of a run in nats/byte and bits/byte",
                       description="Score a run's weights on held-out bytes: the first --bytes bytes "
                                   f"(default {DEFAULT_EVAL_BYTES}) of its validation stream (or of --data), in "
                                   "windows of the run's seq_len + 1 overlapping by one byte, each from a zero "
                                   "state. Deterministic. Without --data, summary.json gets val_loss / val_bpb.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (the --out of `elmanlab train`)")
    p.add_argument("--data", metavar="PATH", help="score this file instead of the run's validation bytes")
    p.add_argument("--bytes", type=int, default=DEFAULT_EVAL_BYTES,
                   help=f"bytes to score, fewer if the data is shorter (default {DEFAULT_EVAL_BYTES})")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: the run's batch)")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="final",
                   help="final: the run's final weights (else its newest checkpoint's); best: those of its best "
                        "held-out score, kept with --keep-best (default final)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from elmanlab.evaluate import evaluate_run
    if args.batch_size is not None and args.batch_size < 1:
        raise ElmanlabError(f"--batch-size must be >= 1, got {args.batch_size}")
    res = evaluate_run(args.run_dir, data=args.data, eval_bytes=args.bytes, device=args.device,
                       batch_size=args.batch_size, weights=args.weights)
    if args.json:
        print_json(res)
        return 0
    print(f"run          {res['run']}")
    print(f"weights      {res['weights']}")
    print(f"data         {res['source']}")
    print(f"scored       {res['val_bytes']:,} bytes (windows of {res['seq_len']} + 1) in {res['eval_s']:.1f} s")
    print(f"loss         {res['val_loss']:.4f} nats/byte")
    print(f"bits/byte    {res['val_bpb']:.4f}")
    return 0
