"""Which parameters a pure-bf16 run can still move, counted at initialisation for the 400M rows.

The reference's 400M scripts cast the whole model to bf16 (``.bfloat16()``), so each Schedule-Free
AdamW step adds its update to bf16 weights; an update smaller than half the bf16 spacing of the weight
it lands on rounds away. Late in a run Schedule-Free moves the weights it evaluates (y) by
``lr * (beta1 * (1 - c) - 1) * g`` (about 0.1 lr = 3e-5 at lr 3e-4, for an Adam-normalised gradient
element g of size 1) plus ``c * (z - y)`` with c = 1/t; its fast iterate z moves by lr * g. This script
counts, for each model of a study's record, the share of parameter elements whose half-spacing in bf16
exceeds a step of each size: the elements a step of that size cannot change.

It asks one question of docs/results/reference-400m/README.md's finding 3: the reference's Mamba2, E1
and minLSTM improved about half as much from step 900 to 1,500 as this lab's (fp32 weights), its minGRU
as much. If pure bf16 were the cause, minGRU would have to lose fewer of its updates to rounding than
the other three. At initialisation it is the other way round (benchmarks/results/pure-bf16-movable-400m.md).
Trained weights move away from their initial values, so this is the state at step 0, not at step 900.

    python3 benchmarks/pure_bf16_movable.py --md benchmarks/results/pure-bf16-movable-400m.md \\
        --json benchmarks/results/pure-bf16-movable-400m.json          # ~3 minutes on two cores
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

STUDY = "docs/results/reference-400m/study.json"
RUNS = ("reference-mamba2-d1728x22,reference-e1-d1760x26,reference-minlstm-d2304x24,reference-mingru-d2752x24,"
        "mamba2-d1728x22-d_state=64-s42,e1-d1760x26-s42,minlstm-d2304x24-s42,mingru-d2752x24-s42")
STEPS = (1e-5, 3e-5, 1e-4, 3e-4)


def half_spacing(x: torch.Tensor) -> torch.Tensor:
    """Half the spacing of bf16 numbers at each element of ``x`` (as rounded to bf16; 8 significant
    bits, so the spacing is 2^(floor(log2|x|) - 7)). A zero gets bf16's smallest normal spacing."""
    v = x.detach().to(torch.bfloat16).float().abs()
    e = torch.floor(torch.log2(v.clamp_min(torch.finfo(torch.bfloat16).tiny)))
    return torch.exp2(e - 8)


def stuck_shares(model: torch.nn.Module, steps=STEPS) -> dict:
    """Per step size: the share of parameter elements that a step of that size leaves unchanged in bf16,
    over all parameters and over the matrices (2-D and up) and the vectors apart."""
    total = {"all": 0, "matrices": 0, "vectors": 0}
    stuck = {k: [0] * len(steps) for k in total}
    for p in model.parameters():
        half = half_spacing(p)
        kind = "matrices" if p.dim() >= 2 else "vectors"
        for k in ("all", kind):
            total[k] += p.numel()
        for i, s in enumerate(steps):
            c = int((half > s).sum())
            stuck["all"][i] += c
            stuck[kind][i] += c
    return {"params": total["all"], "steps": list(steps),
            **{f"stuck_{k}": [c / total[k] if total[k] else None for c in stuck[k]] for k in total},
            "matrix_params": total["matrices"], "vector_params": total["vectors"]}


def build(job: dict, seed: int = 42) -> torch.nn.Module:
    """The model of a study's job record (its width, or its parameter target solved as a run would)."""
    from elmanlab.lm import LM
    from elmanlab.sizing import model_config
    torch.manual_seed(seed)
    dim = job.get("dim")
    return LM(model_config(job["model"], params=None if dim else job.get("params"), dim=dim, depth=job.get("depth"),
                           options=job.get("options"), mlp_ratio=job.get("mlp_ratio"),
                           tie_embeddings=job.get("tie_embeddings", False), norm=job.get("norm", "rms")))


def markdown(rows: list[dict]) -> str:
    steps = rows[0]["steps"]
    head = "| run | params | " + " | ".join(f"stuck at a step of {s:g}" for s in steps) + " | matrices stuck at 3e-05 |"
    out = ["Share of parameter elements (at initialisation, seed 42, cast to bf16) whose bf16 half-spacing exceeds "
           "a step of the given size: a step that small leaves them unchanged.", "", head,
           "|" + "---|" * (len(steps) + 3)]
    i3 = steps.index(3e-5) if 3e-5 in steps else None
    for r in rows:
        cells = " | ".join(f"{100 * v:.1f}%" for v in r["stuck_all"])
        mat = f"{100 * r['stuck_matrices'][i3]:.1f}%" if i3 is not None else "-"
        out.append(f"| {r['run']} | {r['params'] / 1e6:.1f}M | {cells} | {mat} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=STUDY, help=f"a study's study.json holding the runs (default {STUDY})")
    ap.add_argument("--runs", default=RUNS, help="comma-separated run ids of that study (default: the 400M "
                    "reference wave's Mamba2, E1, minLSTM, minGRU, then the lab's defaults of the same rows)")
    ap.add_argument("--steps", default=",".join(f"{s:g}" for s in STEPS),
                    help="comma-separated step sizes (default 1e-5,3e-5,1e-4,3e-4)")
    ap.add_argument("--json", help="write the shares here")
    ap.add_argument("--md", help="write the table here")
    args = ap.parse_args(argv)
    try:
        jobs = {j["id"]: j for j in json.loads(Path(args.study).read_text())["jobs"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot read the study record {args.study} ({e}); give --study a study's study.json",
              file=sys.stderr)
        return 2
    try:
        steps = tuple(float(s) for s in args.steps.split(","))
    except ValueError:
        print(f"error: --steps {args.steps!r}: give comma-separated numbers, e.g. 1e-5,3e-5", file=sys.stderr)
        return 2
    runs = [r for r in args.runs.split(",") if r]
    missing = [r for r in runs if r not in jobs]
    if missing:
        print(f"error: no run {', '.join(missing)} in {args.study}; pick --runs from its jobs' ids", file=sys.stderr)
        return 2
    rows = []
    for r in runs:
        model = build(jobs[r])
        rows.append({"run": r, "model": jobs[r]["model"], "options": jobs[r]["options"], "norm": jobs[r]["norm"],
                     **stuck_shares(model, steps)})
        del model
        print(f"{r}: " + ", ".join(f"{s:g} {100 * v:.1f}%" for s, v in zip(steps, rows[-1]["stuck_all"])), flush=True)
    table = markdown(rows)
    print(table)
    if args.md:
        Path(args.md).write_text(f"# Pure bf16: the parameters a step cannot move, at initialisation\n\n{table}\n"
                                 f"    python3 benchmarks/pure_bf16_movable.py {' '.join(argv or sys.argv[1:])}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"study": args.study, "torch": torch.__version__, "seed": 42,
                                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
