"""Training curves of runs from several studies, compared at the same steps on the same byte stream.

Two studies that train with the same seed, batch size, sequence length and training file read the same
batches at every step: the sampler's offsets are a pure function of (seed, step, row)
(``elmanlab.data.BatchSampler``). A run of 1,500 steps then saw exactly the first 1,500 batches of a run
of 2,000 steps, and the two compare step by step although their ``data_fingerprint`` (a hash chained
over every step consumed) differ. This script shows that it is so rather than assuming it: for each run
it recomputes the fingerprint of the sampler's stream over the run's own steps and requires it to equal
the one the run recorded (``stream``: verified); runs whose stream cannot be verified are listed apart,
never compared. Then, for the runs whose (seed, batch, sequence length, training bytes) agree, it prints
and writes each one's last-100 training loss at the given steps (``Run.value_at``: the loss a run
stopped at that step would have recorded; Schedule-Free with no warm-up looks nowhere ahead) and plots
the curves (PNG).

Built for issue 19 / 20: the 400M E1 run of studies/reference-400m.yaml against E1's and Mamba2's
scaling-small runs (seed 42) at the same steps.

    python3 benchmarks/same_stream_curves.py docs/results/scaling-small docs/results/reference-400m \\
        --models e1,mamba2 --seed 42 --out benchmarks/results/same-stream/e1-mamba2-s42.json \\
        --plot benchmarks/results/same-stream/e1-mamba2-s42.png
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from _harness import save_json
from elmanlab.data import BatchSampler, fingerprint_start, fingerprint_update
from elmanlab.errors import ElmanlabError
from elmanlab.hardware import source_info
from elmanlab.report.collect import collect_runs

DEFAULT_STEPS = (100, 250, 500, 750, 1000, 1250, 1500)


def stream_fingerprint(train_bytes: int, seq_len: int, batch_size: int, seed: int, steps: int) -> str:
    """The data_fingerprint that a run of ``steps`` steps of the sampler's stream records."""
    s = BatchSampler(train_bytes, seq_len, batch_size, seed)
    fp = fingerprint_start(train_bytes, seq_len)
    for step in range(steps):
        fp = fingerprint_update(fp, s.offsets(step))
    return fp


def stream_key(r) -> tuple | None:
    """(seed, batch, seq_len, train_bytes) of a run, None where its record lacks one."""
    key = (r.seed, r.get("batch_size"), r.get("seq_len"), r.get("train_bytes"))
    return None if any(k is None for k in key) else tuple(int(k) for k in key)


def label(r) -> str:
    """The report's configuration label, plus the training settings other than the defaults that change
    what a step does (learning rate, warm-up, clipping)."""
    from elmanlab.config import train_settings
    defaults = train_settings()
    extra = [f"{k}={r.train[k]:g}" for k in ("lr", "warmup_steps", "grad_clip")
             if r.train.get(k) is not None and r.train[k] != defaults[k].default]
    return " ".join([r.model, r.label(), *extra])


def collect(folders, models, seed) -> tuple[list[dict], list[dict]]:
    """(compared runs, runs set aside with why) from the completed runs of ``folders``."""
    rows, aside = [], []
    for folder in folders:
        runs, _ = collect_runs(folder)
        for r in sorted(runs, key=lambda r: (r.model, r.params or 0, r.seed or 0)):
            if r.status != "completed" or (models and r.model not in models) or (seed is not None and r.seed != seed):
                continue
            row = {"folder": str(folder), "run": r.id, "model": r.model, "label": label(r), "params": r.params,
                   "seed": r.seed, "steps": r.get("steps"), "wave": r.wave,
                   "gpu": (r.summary.get("versions") or {}).get("gpu"),
                   "commit": (r.summary.get("source") or {}).get("commit"), "_run": r}
            key, fp = stream_key(r), r.summary.get("data_fingerprint")
            if key is None or not fp or not row["steps"]:
                aside.append({**row, "why": "its record lacks the seed, batch, seq_len, train_bytes, steps or "
                                            "data_fingerprint"})
                continue
            seed_, batch, seq_len, train_bytes = key
            if stream_fingerprint(train_bytes, seq_len, batch, seed_, int(row["steps"])) != fp:
                aside.append({**row, "why": "its data_fingerprint is not the sampler's stream for its settings "
                                            "(another sampler, or a resumed or distributed run that read otherwise)"})
                continue
            rows.append({**row, "stream": {"seed": seed_, "batch_size": batch, "seq_len": seq_len,
                                           "train_bytes": train_bytes, "verified": True}})
    return rows, aside


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="study output folders (or folders of runs) to read")
    ap.add_argument("--models", help="comma-separated families to keep (default: all)")
    ap.add_argument("--seed", type=int, help="keep only the runs of this seed (default: all)")
    ap.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                    help=f"comma-separated steps at which to give each run's last-100 loss (default "
                         f"{','.join(map(str, DEFAULT_STEPS))})")
    ap.add_argument("--out", help="write the table to this JSON file")
    ap.add_argument("--plot", help="write the curves to this PNG file")
    args = ap.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
        if not steps or min(steps) < 100:
            raise ValueError
    except ValueError:
        print(f"error: --steps takes comma-separated whole steps of at least 100, got {args.steps!r}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",")] if args.models else []
    try:
        rows, aside = collect(args.folders, models, args.seed)
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    groups = defaultdict(list)
    for row in rows:
        s = row["stream"]
        groups[(s["seed"], s["batch_size"], s["seq_len"], s["train_bytes"])].append(row)
    if not groups:
        print(f"error: no completed run with a verified stream under {', '.join(args.folders)}"
              + (f" ({len(aside)} set aside: {aside[0]['why']})" if aside else ""), file=sys.stderr)
        return 2
    for row in rows:
        r = row.pop("_run")
        row["loss_at"] = {str(s): r.value_at(s, "loss_last100") if s <= row["steps"] else None for s in steps}
        # each 100 steps' mean loss, for the plot
        row["curve"] = [(k, r.value_at(k, "loss_last100")) for k in range(100, int(row["steps"]) + 1, 100)]
    for row in aside:
        row.pop("_run", None)
    for key, grp in groups.items():
        print(f"\nseed {key[0]}, batch {key[1]} x {key[2]} bytes, {key[3]:,} training bytes: the same batches at "
              f"every step (streams verified)\nlast-100 training loss (nats/byte) at step")
        print(f"{'run':<40} {'params':>6} " + " ".join(f"{s:>7}" for s in steps))
        for row in grp:
            vals = " ".join(f"{v:>7.4f}" if v is not None else f"{'-':>7}" for v in row["loss_at"].values())
            print(f"{row['folder'].rstrip('/').split('/')[-1] + '/' + row['run']:<40} "
                  f"{(row['params'] or 0) / 1e6:>5.0f}M {vals}")
    for row in aside:
        print(f"set aside: {row['run']}: {row['why']}")
    if args.plot:
        plot(groups, args.plot)
    if args.out:
        save_json(args.out, {"what": "last-100 training loss at the same steps, runs of one verified byte stream",
                             "folders": args.folders, "models": models, "seed": args.seed, "steps": steps,
                             "runs": rows, "set_aside": aside, "source": source_info()})
    return 0


def plot(groups, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path
    fig, axes = plt.subplots(1, len(groups), figsize=(8 * len(groups), 5), squeeze=False)
    for ax, (key, grp) in zip(axes[0], groups.items()):
        fams = sorted({r["model"] for r in grp})
        cmaps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
        for fam, cmap in zip(fams, cmaps):
            runs = sorted((r for r in grp if r["model"] == fam), key=lambda r: r["params"] or 0)
            cm = plt.get_cmap(cmap)
            for i, r in enumerate(runs):
                pts = [(s, v) for s, v in ((int(k), v) for k, v in r["loss_at"].items()) if v is not None]
                dense = [(k, v) for k, v in r["curve"] if v is not None]
                ax.plot([p[0] for p in dense], [p[1] for p in dense], color=cm(0.4 + 0.6 * (i + 1) / len(runs)),
                        label=f"{r['label']} ({(r['params'] or 0) / 1e6:.0f}M)", lw=1.4)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=3, color=cm(0.4 + 0.6 * (i + 1) / len(runs)))
        ax.set_ylim(top=min(2.0, ax.get_ylim()[1]))
        ax.set_xlabel("step (the same batches in every run)")
        ax.set_ylabel("training loss, mean of each 100 steps (nats/byte)")
        ax.set_title(f"seed {key[0]}, batch {key[1]} x {key[2]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
