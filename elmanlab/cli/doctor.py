"""`elmanlab doctor`: the GPU, library versions and the kernel path of each model family."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("doctor", help="show GPU, library versions and the kernel path of each model family",
                       description="Print the GPU, torch, triton, fla, mamba_ssm and TileLang versions, and "
                                   "which path (a fast kernel, or the plain-PyTorch reference) each model "
                                   "family will use on this machine.")
    p.add_argument("--probe", action="store_true",
                   help="also run one small bf16 forward+backward of every family's layer on the GPU")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from elmanlab.doctor import family_paths, machine_info, probe_families
    info = machine_info()
    paths = family_paths()
    if args.json:
        probe = probe_families() if args.probe and info["gpu"] else None
        print(json.dumps({"machine": info, "families": paths, "probe": probe}, indent=2))
        return 0
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
    for fam, r in paths.items():
        line = f"  {fam:<8} {r['path']}"
        if r["path"] == "reference" or "refused" in r["path"] or r["path"] == "unknown":
            line += f"  [{r['reason']}]"
        print(line)
    if args.probe and info["gpu"]:
        print("probe (bf16 forward+backward, one small layer; a fresh machine tunes the Triton kernels "
              "of mamba2 and gdn first, minutes)", flush=True)
        probe_families(lambda fam, r: print(f"  {fam:<8} {r}", flush=True))
    elif args.probe:
        print("probe: skipped, no GPU")
    return 0
