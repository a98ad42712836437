"""`elmanlab doctor`: the GPU, library versions and the kernel path of each model family; exits
non-zero on a CUDA machine where a family has no fast path. `--warmup STUDY` pre-tunes the kernels
at a study's shapes."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("doctor", help="show GPU, library versions and the kernel path of each model family",
                       description="Print the GPU, torch, triton, fla, mamba_ssm and TileLang versions, and "
                                   "which path (a fast kernel, or the plain-PyTorch reference) each model "
                                   "family will use on this machine. Exits with 1 on a CUDA machine where a "
                                   "family has no fast path.")
    p.add_argument("--probe", action="store_true",
                   help="also run one small bf16 forward+backward of every family's layer on the GPU")
    p.add_argument("--warmup", metavar="STUDY",
                   help="run one bf16 forward+backward of every distinct model of this study file at its "
                        "batch shape, so that Triton autotuning, TileLang's JIT and the kernel builds are "
                        "paid once per machine (they are cached on disk) before the study runs")
    p.add_argument("--data", metavar="PATH", help="with --warmup: the study's data file, when the path in "
                                                   "the study file does not exist here (as `elmanlab study --data`)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from elmanlab.doctor import family_paths, machine_info, missing_fast_paths, probe_families
    plan = None
    if args.warmup:                                 # a bad study file: one error line before anything
        from elmanlab.study import load_study
        from elmanlab.warmup import warmup_plan
        plan = warmup_plan(load_study(args.warmup, data=args.data).jobs)
    info = machine_info()
    paths = family_paths()
    missing = missing_fast_paths(paths) if info["gpu"] else []
    if args.json:
        probe = probe_families() if args.probe and info["gpu"] else None
        warm = _warm(plan, info) if plan is not None else None
        print(json.dumps({"machine": info, "families": paths, "probe": probe, "warmup": warm,
                          "missing_fast_paths": missing}, indent=2))
        return 1 if missing else 0
    g = info["gpu"]
    print("machine")
    print(f"  python        {info['python']}")
    print(f"  torch         {info['torch']} (CUDA {info['cuda'] or '-'})")
    print("  GPU           " + (f"{g['name']} x{g['count']} ({g['capability']}, {g['sms']} SMs, "
                                 f"{g['memory_gib']} GiB)" if g else "none"))
    for k, label in (("triton", "triton"), ("fla", "fla"), ("mamba_ssm", "mamba_ssm"), ("tilelang", "TileLang"),
                     ("schedulefree", "schedulefree"), ("nvcc", "nvcc")):
        print(f"  {label:<13} {info[k] or 'not installed'}")
    print("model families (path at the default 400M shapes)")
    w = max(8, *map(len, paths))
    for fam, r in paths.items():
        line = f"  {fam:<{w}} {r['path']}"
        if not r.get("fast") or "refused" in r["path"]:
            line += f"  [{r['reason']}]"
        print(line)
    if args.probe and g:
        print("probe (bf16 forward+backward, one small layer; a fresh machine tunes the Triton kernels "
              "of mamba2 and gdn first, minutes)", flush=True)
        probe_families(lambda fam, r: print(f"  {fam:<{w}} {r}", flush=True))
    elif args.probe:
        print("probe: skipped, no GPU")
    if plan is not None:
        print(f"warm-up: {len(plan)} distinct models of {args.warmup}" + ("" if g else ": skipped, no GPU"),
              flush=True)
        _warm(plan, info, lambda r: print(f"  {r['model']:<8} {r['dim']}x{r['depth']} B{r['batch_size']} "
                                          f"T{r['seq_len']} ({r['runs']} runs): {r['result']}, {r['seconds']} s",
                                          flush=True))
    if missing:
        sys.stderr.write(f"error: no fast path on this GPU for {', '.join(missing)}; see the reasons above "
                         f"(studies and `elmanlab train` stop on them unless --allow-reference)\n")
        return 1
    return 0


def _warm(plan, info, report=None):
    if not info["gpu"]:
        return []
    import torch

    from elmanlab.warmup import warm_up
    return warm_up(plan, torch.device("cuda", 0), report)
