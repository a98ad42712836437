"""End-to-end training throughput of every model family (bf16, after warm-up).

For each family x size x batch: builds the model at the target size (``elmanlab size`` solver),
runs the training loop's own step (``elmanlab.train``: bf16 autocast, Schedule-Free AdamW, grad
norm, non-finite guard) on the embedded corpus, a few warm-up steps (compilation and Triton
autotuning happen there), then times ``--steps`` steps. Reports tokens/s, MFU = 6 x params x
tokens/s over this GPU's bf16 matmul rate measured in the same run (8192^3 products; the
Transformer's attention FLOPs, 12 x layers x width x seq_len per token, are added), step time
and peak memory (torch.cuda.max_memory_allocated over setup + all steps), and the kernel path of
each family (``elmanlab doctor``). A configuration that runs out of memory or fails is recorded
with its error and the rest go on. JSON and a markdown table are written after every
configuration (atomically), so a run cut short keeps what it measured; ``--resume`` skips the
configurations already in the JSON.

    python3 benchmarks/throughput.py                         # all 8 families, 100M and 400M, B16 and B64
    python3 benchmarks/throughput.py --models mamba2,gdn --params 400M --batch 16
    python3 benchmarks/throughput.py --models gdn --params 400M --batch 16 --mode eager,graph
    python3 benchmarks/throughput.py --models none --config e88:2944x20:n_state=48,n_heads=44 --batch 16

``--mode graph`` runs the step as ``elmanlab train --cuda-graph`` does (forward + backward replayed
as one CUDA graph; the eager step and the capture fall in the warm-up); ``eager,graph`` measures
both side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from elmanlab.layers import FAMILIES

ALL = list(FAMILIES)            # every family, the Transformer baseline included


MODES = ("eager", "graph")


def parse_config(spec: str):
    """``family:DIMxDEPTH[:key=value,...]`` (family options, typed as the family declares them) ->
    ModelConfig; a bad spec is an ElmanlabError naming the problem."""
    from elmanlab.cli.common import model_option_fields
    from elmanlab.config import field_type
    from elmanlab.errors import ElmanlabError
    from elmanlab.sizing import model_config
    parts = spec.split(":")
    shape = parts[1].lower().split("x") if len(parts) in (2, 3) else []
    if len(shape) != 2 or not all(x.isdigit() for x in shape):
        raise ElmanlabError(f"--config {spec!r}: write family:DIMxDEPTH[:key=value,...], e.g. "
                            "e88:2944x20:n_state=48,n_heads=44")
    fields = model_option_fields()
    opts = {}
    for kv in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        key, _, val = kv.partition("=")
        if key not in fields or not val:
            raise ElmanlabError(f"--config {spec!r}: {kv!r} is not key=value with a family option as key")
        typ = field_type(fields[key][0])
        try:
            opts[key] = (val.lower() in ("1", "true", "yes")) if typ is bool else typ(val)
        except ValueError:
            raise ElmanlabError(f"--config {spec!r}: {key} takes a {typ.__name__}, got {val!r}") from None
    return model_config(parts[0], dim=int(shape[0]), depth=int(shape[1]), options=opts)


def run_config(model: str, params: str, batch: int, seq_len: int, warmup: int, steps: int,
               mode: str = "eager", mcfg=None) -> dict:
    """One row: ``model`` at the target ``params`` (solved), or the explicit config ``mcfg`` (then
    ``params`` is its label)."""
    from _harness import bench_trainer, run_steps
    from elmanlab.ops import implementations_used
    from elmanlab.sizing import model_config
    mcfg = mcfg or model_config(model, params=params)
    row = {"model": model, "target": params, "batch": batch, "mode": mode, "seq_len": seq_len, "dim": mcfg.dim,
           "depth": mcfg.depth, "options": dataclasses.asdict(mcfg.options)}
    try:
        t0 = time.perf_counter()
        with bench_trainer(mcfg, batch, seq_len, warmup + steps, cuda_graph=mode == "graph") as trainer:
            row["params"] = trainer.n_params
            losses, _ = run_steps(trainer, warmup)
            row["warmup_s"] = round(time.perf_counter() - t0, 2)
            timed, step_times = run_steps(trainer, steps)
            losses += timed
            row["step_ms"] = round(1e3 * statistics.median(step_times), 2)
            row["tokens_per_s"] = round(batch * seq_len * steps / sum(step_times), 1)
            row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            row["loss_first"], row["loss_last"] = round(losses[0], 4), round(losses[-1], 4)
            row["flops_per_token"] = trainer.flops_per_token()
            row["ran"] = trainer.kernel()["path"]                       # what the op recorded, not a prediction
            row["implementations"] = implementations_used()
            row["cuda_graph"] = trainer.use_graph
            row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    except Exception as e:
        row["status"] = f"error: {type(e).__name__}: {e}".splitlines()[0][:300]
    return row


def fmt_k(x):
    return f"{x / 1e3:.1f}K"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Training throughput, {m['gpu']['name']}", "",
             f"bf16 autocast, Schedule-Free AdamW, the training loop's step (elmanlab.train); warm-up steps "
             f"untimed, then timed steps (per row in the JSON); seq_len {result['seq_len']}. MFU = training FLOPs per "
             f"token (6 x params, plus attention's for the Transformer) x tokens/s / the bf16 8192^3 matmul rate measured in the same run as the row "
             f"({min(r.get('matmul_tflops', result['matmul_tflops']) for r in result['rows']):.0f}-"
             f"{max(r.get('matmul_tflops', result['matmul_tflops']) for r in result['rows']):.0f} TFLOP/s). "
             f"torch {m['torch']}, triton {m['triton']}, fla {m['fla']}, mamba_ssm {m['mamba_ssm']}, "
             f"TileLang {m['tilelang']}. Code: commit {(result.get('source') or {}).get('commit') or 'unrecorded'}.", "",
             "| model | target | params | dim x depth | batch | step | tokens/s | MFU | step ms | peak GB | kernel path |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        path = r.get("path") or result["paths"].get(r["model"], {}).get("path", "?")
        if r.get("ran"):
            path += f" (ran: {r['ran']})"
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['target']} | {r.get('params', 0) / 1e6:.0f}M | {r['dim']}x{r['depth']} "
                         f"| {r['batch']} | {r.get('mode', 'eager')} | {r['status']} | | | | {path} |")
            continue
        lines.append(f"| {r['model']} | {r['target']} | {r['params'] / 1e6:.0f}M | {r['dim']}x{r['depth']} | "
                     f"{r['batch']} | {r.get('mode', 'eager')} | {fmt_k(r['tokens_per_s'])} | {100 * r['mfu']:.1f}% | {r['step_ms']:.0f} | "
                     f"{r['peak_memory_gb']:.1f} | {path} |")
    lines += [""] + [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def refuse_existing(jpath: Path, args) -> bool:
    if jpath.exists() and not (args.resume or args.overwrite):
        print(f"error: {jpath} exists (committed results?): --resume to add the missing rows to it, --out STEM "
              f"to write elsewhere, or --overwrite to replace it", file=sys.stderr)
        return True
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ALL), help="comma-separated families (default: all; none: "
                    "only the --config rows)")
    ap.add_argument("--config", action="append", default=[], metavar="SPEC",
                    help="an explicit configuration as well, family:DIMxDEPTH[:key=value,...] (repeatable), "
                         "e.g. e88:2944x20:n_state=48,n_heads=44 (the seeds' E88 500M)")
    ap.add_argument("--params", default="100M,400M", help="comma-separated target sizes")
    ap.add_argument("--batch", default="16,64", help="comma-separated batch sizes")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (autotune, compilation)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--mode", default="eager", help="comma-separated: eager (default), graph (the step as "
                    "train --cuda-graph: forward + backward replayed as one CUDA graph), or eager,graph for both")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/throughput-<gpu>)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the JSON, run the rest")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing JSON / table (default: refuse)")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m and m != "none"]
    unknown = [m for m in models if m not in ALL]
    if unknown:
        print(f"error: unknown --models {','.join(unknown)}; choose from {','.join(ALL)}", file=sys.stderr)
        return 2
    modes = [m for m in args.mode.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        print(f"error: --mode takes {', '.join(MODES)} (comma-separated), got {args.mode!r}", file=sys.stderr)
        return 2
    if "graph" in modes and args.warmup < 2:
        print("error: --mode graph needs --warmup 2 or more (one eager step, then the capture)", file=sys.stderr)
        return 2
    from elmanlab.errors import ElmanlabError
    try:
        configs = [(spec, parse_config(spec)) for spec in args.config]
    except ElmanlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out and refuse_existing(Path(args.out).with_suffix(".json"), args):
        return 2
    if not torch.cuda.is_available():
        print("error: the throughput benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    from elmanlab.doctor import family_paths, machine_info
    from elmanlab.fsutil import atomic_write_text
    machine = machine_info()
    gpu_tag = machine["gpu"]["name"].split()[1].lower() if len(machine["gpu"]["name"].split()) > 1 else "gpu"
    stem = Path(args.out or Path(__file__).parent / "results" / f"throughput-{gpu_tag}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    jpath, mpath = stem.with_suffix(".json"), stem.with_suffix(".md")
    if not args.out and refuse_existing(jpath, args):
        return 2
    rows = []
    notes = []
    if args.resume and jpath.exists():
        old = json.loads(jpath.read_text())
        rows, notes = old["rows"], old.get("notes", [])
    from elmanlab.hardware import measure_bf16_matmul_flops, source_info
    peak = measure_bf16_matmul_flops(torch.device("cuda"))
    print(f"{machine['gpu']['name']}: bf16 matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    paths = family_paths()
    for fam in models:
        print(f"  {fam:<8} {paths[fam]['path']}", flush=True)
    result = {"machine": machine, "source": source_info(), "matmul_tflops": peak / 1e12, "warmup": args.warmup, "steps": args.steps,
              "seq_len": args.seq_len, "paths": paths, "rows": rows, "notes": notes}
    done = {(r["model"], r["target"], r["batch"], r.get("mode", "eager")) for r in rows}
    jobs = [(fam, params, None) for params in args.params.split(",") for fam in models]
    jobs += [(cfg.model, spec.split(":", 1)[1], cfg) for spec, cfg in configs]
    for fam, params, cfg in jobs:
        if cfg is None:
            paths_here = family_paths(params)             # the path can depend on the size (E42)
        for batch, mode in ((int(b), m) for b in args.batch.split(",") for m in modes):
            if (fam, params, batch, mode) in done:
                continue
            r = run_config(fam, params, batch, args.seq_len, args.warmup, args.steps, mode, cfg)
            if cfg is None:
                r["path"] = paths_here[fam]["path"]
            r["matmul_tflops"], r["warmup"], r["steps"] = round(peak / 1e12, 1), args.warmup, args.steps
            if r["status"] == "ok":      # attention's FLOPs counted for the Transformer (sizing.train_flops_per_token)
                r["mfu"] = round(r["flops_per_token"] * r["tokens_per_s"] / peak, 4)
            rows.append(r)
            print(f"{fam:<8} {params:>5} B{batch:<3} {mode:<5} " + (
                f"{r['tokens_per_s'] / 1e3:8.1f}K tok/s  MFU {100 * r['mfu']:5.1f}%  {r['step_ms']:7.1f} ms  "
                f"{r['peak_memory_gb']:6.1f} GB  (warm-up {r['warmup_s']} s)" if r["status"] == "ok" else r["status"]),
                flush=True)
            atomic_write_text(jpath, json.dumps(result, indent=1))
            atomic_write_text(mpath, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
