"""`elmanlab generate`: sample text from a run, byte by byte, as it comes."""
from __future__ import annotations

import sys

from elmanlab.runs import WEIGHT_CHOICES


def register(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a run, byte by byte, as it comes",
                       description="Stream bytes from a trained run through the recurrent state (one step per "
                                   "byte, constant memory). Invalid UTF-8 is printed with replacement characters.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (the --out of `elmanlab train`)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start after a newline)")
    p.add_argument("--max-bytes", type=int, default=500, help="bytes to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely bytes only")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: same seed, same text (default 0)")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="final",
                   help="final: the run's final weights (else its newest checkpoint's); best: those of its best "
                        "held-out score, kept with --keep-best (default final)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from elmanlab.checkpoint import load_model
    from elmanlab.generate import check_sampling, generate, print_stream
    check_sampling(args.max_bytes, args.temperature, args.top_k)
    model, _ = load_model(args.run_dir, args.device, args.weights)
    prompt = args.prompt.encode("utf-8", errors="surrogateescape")
    try:
        print_stream(prompt.decode("utf-8", errors="replace"))
        generate(model, prompt, args.max_bytes, args.temperature, args.top_k, args.seed, write=print_stream)
        print_stream("\n")
    except BrokenPipeError:                     # e.g. `elmanlab generate ... | head`
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
