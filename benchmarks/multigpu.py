"""Multi-GPU scaling: data-parallel training and a study spread over GPUs (issue 8).

For each model (default: mamba2 and e1 at 400M) three real training runs with the same seed:

    1gpu-b16   one process, global batch 16               (the per-GPU throughput baseline)
    2gpu-b32   torchrun --nproc_per_node=2, global batch 32 (each rank 16 rows of the same batch)
    1gpu-b32   one process, global batch 32               (the loss-curve reference for 2gpu-b32)

and reports tokens/s(2gpu-b32) / tokens/s(1gpu-b16) (target >= 1.8) and how closely the
2-process loss curve follows the 1-process curve with the same global batch (same data stream,
so they differ only by reduction order and bf16 rounding). Then a four-job study runs with
``--gpus 0,1`` and with ``--gpus 0`` and the wall-clock ratio is reported (target about 0.5).

    python benchmarks/multigpu.py --out $OUT/multigpu                       # on a 2-GPU machine
    python benchmarks/multigpu.py --device cpu --params 300K --steps 20 \\
        --batch 4 --seq-len 64 --skip-study --out /tmp/mg                   # plumbing check on CPU (gloo)

NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1) in every
process this script starts. Writes multigpu.json and multigpu.md into --out and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ENV_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def run(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Run a command, its output to ``log``; return its wall-clock seconds; raise on failure."""
    full_env = {**os.environ, **ENV_SAFE, **(env or {})}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env)
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"command failed (exit {rc}): {' '.join(cmd)}\n  " + "\n  ".join(tail))
    return wall


def train_cmd(a, model: str, batch: int, out: Path, nproc: int) -> list[str]:
    base = [sys.executable, "-m"]
    if nproc > 1:
        base += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    cmd = base + ["elmanlab", "train", model, "--params", a.params, "--steps", str(a.steps),
                  "--batch-size", str(batch), "--seq-len", str(a.seq_len), "--seed", str(a.seed),
                  "--device", a.device, "--out", str(out), "--eval-bytes", "65536"]
    if a.data:
        cmd += ["--data", a.data]
    return cmd


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if "loss" in r and "step" in r:
                out[int(r["step"])] = float(r["loss"])
    return out


def curve_gap(a: dict[int, float], b: dict[int, float], window: int = 10) -> float:
    """Largest relative gap between the two loss curves, each averaged over windows of logged steps."""
    steps = sorted(set(a) & set(b))
    if not steps:
        return float("nan")
    gaps = []
    for i in range(0, len(steps), window):
        w = steps[i:i + window]
        ma = sum(a[s] for s in w) / len(w)
        mb = sum(b[s] for s in w) / len(w)
        gaps.append(abs(ma - mb) / abs(mb))
    return max(gaps)


def scaling(a, out: Path) -> list[dict]:
    from elmanlab.runs import run_status
    rows = []
    for model in a.models:
        runs = {}
        big = a.batch * a.nproc
        for name, batch, nproc in ((f"1gpu-b{a.batch}", a.batch, 1), (f"{a.nproc}gpu-b{big}", big, a.nproc),
                                   (f"1gpu-b{big}", big, 1)):
            d = out / f"{model}-{name}"
            if run_status(d)[0] != "completed":
                shutil.rmtree(d, ignore_errors=True)        # failed, cut or never run: measure it (again)
                print(f"  {model} {name} ...", flush=True)
                env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(nproc)))} if a.device != "cpu" else {}
                run(train_cmd(a, model, batch, d, nproc), out / f"{model}-{name}.log", env)
            runs[name] = d
        names = list(runs)
        s1, sN, sref = (run_status(runs[n])[2] for n in names)
        rows.append({
            "model": model, "params": s1["params"],
            "tokens_per_s_1gpu": s1["tokens_per_s"], "tokens_per_s_multi": sN["tokens_per_s"],
            "speedup": sN["tokens_per_s"] / s1["tokens_per_s"],
            "peak_memory_gb_multi": sN.get("peak_memory_gb"), "world_size": sN.get("world_size"),
            "loss_last100_multi": sN.get("loss_last100"), "loss_last100_1gpu_same_batch": sref.get("loss_last100"),
            "curve_gap_rel": curve_gap(losses(runs[names[1]]), losses(runs[names[2]])),
            "same_stream": sN.get("data_fingerprint") == sref.get("data_fingerprint"),
        })
    return rows


STUDY = """name: multigpu-queue
baseline: mamba2
train: {{steps: {steps}, batch_size: {batch}, seq_len: {seq_len}, seed: 42, eval_bytes: 65536}}
grid:
  model: [e1, mamba2]
  params: [{params}]
  seed: [42, 43]
"""


def study(a, out: Path) -> dict:
    f = out / "queue-study.yaml"
    f.write_text(STUDY.format(steps=a.steps, batch=a.batch, seq_len=a.seq_len, params=a.params))
    res = {}
    for gpus in (",".join(map(str, range(a.nproc))), "0"):
        d = out / f"study-gpus-{gpus.replace(',', '')}"
        shutil.rmtree(d, ignore_errors=True)                # timed from empty: a finished study returns at once
        cmd = [sys.executable, "-m", "elmanlab", "study", str(f), "--out", str(d), "--gpus", gpus, "--no-report"]
        if a.data:
            cmd += ["--data", a.data]
        print(f"  study --gpus {gpus} ...", flush=True)
        res[gpus] = run(cmd, out / f"study-gpus-{gpus.replace(',', '')}.log")
    keys = list(res)
    return {"wall_s_multi": res[keys[0]], "wall_s_one": res[keys[1]], "ratio": res[keys[0]] / res[keys[1]],
            "gpus_multi": keys[0], "jobs": 4}


def table(rows: list[dict], st: dict | None, device: str, batch: int, nproc: int) -> str:
    lines = [f"Multi-GPU scaling on {device}", "",
             f"| model | params | tok/s 1 GPU b{batch} | tok/s {nproc} GPUs b{batch * nproc} | speedup (target >= 1.8) | "
             "loss last100 N GPUs | 1 GPU same batch | max curve gap | same stream |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['tokens_per_s_1gpu']:,.0f} | "
                     f"{r['tokens_per_s_multi']:,.0f} | {r['speedup']:.2f}x | {r['loss_last100_multi']:.4f} | "
                     f"{r['loss_last100_1gpu_same_batch']:.4f} | {100 * r['curve_gap_rel']:.2f}% | {r['same_stream']} |")
    if st:
        lines += ["", f"Four-job study: --gpus {st['gpus_multi']} {st['wall_s_multi']:.0f} s, --gpus 0 "
                      f"{st['wall_s_one']:.0f} s, ratio {st['ratio']:.2f} (target about 0.5)"]
    return "\n".join(lines)


def device_name(device: str) -> str:
    if device == "cpu":
        return "CPU (gloo)"
    import torch
    n = torch.cuda.device_count()
    return f"{n} x {torch.cuda.get_device_name(0)}" if n else "no GPU visible"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (runs, logs, multigpu.json, multigpu.md)")
    p.add_argument("--models", nargs="+", default=["mamba2", "e1"], help="model families (default mamba2 e1)")
    p.add_argument("--params", default="400M", help="parameter target for every run (default 400M)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--batch", type=int, default=16, help="per-GPU batch (default 16)")
    p.add_argument("--seq-len", type=int, default=512, help="sequence length (default 512)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--nproc", type=int, default=2, help="processes / GPUs for the data-parallel runs (default 2)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda (NCCL) or cpu (gloo)")
    p.add_argument("--data", help="training data (default: the embedded corpus)")
    p.add_argument("--skip-study", action="store_true", help="only the data-parallel part")
    a = p.parse_args(argv)
    if a.nproc < 2:
        p.error("--nproc must be at least 2 (it is compared with one process)")
    if a.device == "cuda":
        import torch
        if torch.cuda.device_count() < a.nproc:
            sys.stderr.write(f"error: {a.nproc} GPUs needed, {torch.cuda.device_count()} visible; "
                             f"run on a machine with {a.nproc} GPUs or pass --device cpu\n")
            return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = scaling(a, out)
        st = None if a.skip_study or a.device == "cpu" else study(a, out)
    except RuntimeError as e:                   # a run failed: its log tail, in one message
        print(f"error: {e}", file=sys.stderr)
        return 1
    dev = device_name(a.device)
    text = table(rows, st, dev, a.batch, a.nproc)
    result = {"device": dev, "args": vars(a), "scaling": rows, "study": st}
    from elmanlab.fsutil import atomic_write_text
    atomic_write_text(out / "multigpu.json", json.dumps(result, indent=2))
    atomic_write_text(out / "multigpu.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
