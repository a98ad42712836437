"""Where a training step's GPU memory goes, counted on the CPU (issue 17: E88's 35 GB).

Builds the LM (``--model`` with ``--params``, or ``--dim`` and ``--depth``, ``--opt key=value``)
and runs one forward pass at B x T (default 16 x 512) under bf16 autocast, counting every tensor
autograd saves for the backward (``torch.autograd.graph.saved_tensors_hooks``), per layer and per
saved tensor. It adds parameters, gradients and Schedule-Free AdamW's state (z and exp_avg_sq per
parameter, plus the foreach step's temporary denominator) and prints a table (component, bytes,
share); ``--json`` writes everything.

What runs is the CUDA training step, emulated on the CPU (benchmarks/_cuda_emulation.py):

* ``--mode fake`` (default): the model lives in PyTorch's FakeTensorMode (shapes, dtypes and
  storages, no data), so the real B16 x T512 step of a 500M model is counted in seconds and
  nothing is scaled. ``--mode real``: real CPU tensors (small models; the tests use it to check
  the fake count).
* The families' CUDA ops are replaced by stand-ins that save exactly what the CUDA autograd
  Functions save: E88's ``E88ScanFn`` (q, k, v, decay as the kernel reads them, and the kernel's
  state checkpoints ``[B, H, ceil(T/C), m, n]`` fp32, C from a port of the v3 kernel's plan for an
  H200), E1's ``ElmanScanFn`` (h, W_h), Mamba2's mamba_ssm ``MambaChunkScanCombinedFn`` (out, x, dt,
  dA_cumsum fp32, A, B, C, D, dt_bias), fla's causal conv (a contiguous copy of its input) and
  mamba_ssm's gated RMSNorm (x, z, rstd), and the LM's RMSNorm as CUDA's fused kernel (input, rstd).
* CPU autocast is not CUDA autocast: CUDA's runs ``linalg_vector_norm`` (hence ``F.normalize``)
  with an fp32 result (``fp32_set_opt_dtype``) and casts the inputs of exp, log, pow, softplus,
  rsqrt, softmax, log_softmax, layer_norm and rms_norm to fp32; CPU autocast does neither. A
  function mode applies CUDA's rules (``--autocast cpu`` turns it off); the JSON lists the calls
  it changed.

Not counted (the comparison with a measured peak says how much that leaves): the backward's own
temporaries (gradients of activations, the kernels' backward outputs), the allocator's rounding
and fragmentation, the CUDA graph's private pool, cuBLAS workspaces and the CUDA context.

    python3 benchmarks/memory_breakdown.py --model e88 --dim 2944 --depth 20 --opt n_state=48 --opt n_heads=44
    python3 benchmarks/memory_breakdown.py --model mamba2 --params 400M --measured-gb 15.0 --json out.json
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _cuda_emulation import CudaAutocastRules, E88ShapeBackend, cuda_paths  # noqa: E402


# ------------------------------------------------------------------ counting
def storage_key(t: torch.Tensor):
    return t.untyped_storage()._cdata


_HERE = (Path(__file__).resolve(), Path(__file__).resolve().with_name("_cuda_emulation.py"))   # the stand-ins
_PKG = Path(__file__).resolve().parent.parent / "elmanlab"


_NOT_SITES = {"__torch_function__", "pack", "_code_site"}


def _code_site() -> str:
    """The innermost frame in elmanlab/ (or in the stand-ins, _cuda_emulation.py): 'file:line'."""
    f = sys._getframe(2)
    while f is not None:
        p = Path(f.f_code.co_filename)
        if (_PKG in p.parents or p in _HERE) and f.f_code.co_name not in _NOT_SITES:
            rel = p.relative_to(_PKG.parent) if _PKG in p.parents else Path("benchmarks") / p.name
            return f"{rel}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "torch"


_VIEW_NODES = ("TBackward0", "TransposeBackward0", "ViewBackward0", "PermuteBackward0", "ExpandBackward0",
               "UnsqueezeBackward0", "SqueezeBackward1", "ReshapeAliasBackward0", "AliasBackward0")


def _cast_of_parameter(fn, param_names: dict):
    """The parameter's name when ``fn`` is (views of) a dtype cast of a parameter, else None."""
    cast = False
    for _ in range(6):
        if fn is None:
            return None
        if fn.name() == "ToCopyBackward0":
            cast = True
        elif fn.name() not in _VIEW_NODES:
            var = getattr(fn, "variable", None)
            return param_names.get(id(var)) if (cast and var is not None) else None
        fn = fn.next_functions[0][0] if fn.next_functions else None
    return None


class SavedTensorCounter:
    """Records every tensor autograd saves: its module, code site, shape, dtype and the bytes of its
    storage. A storage counts once (its first save); the parameters' own storages count zero here
    (they are parameters)."""

    def __init__(self, model: torch.nn.Module):
        self.rows = []
        self.seen = set()
        self.param_keys = {storage_key(p): n for n, p in model.named_parameters()}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.stack = ["(top)"]
        self.handles = []
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._enter(name or "(lm)")))
            self.handles.append(mod.register_forward_hook(self._leave))

    def _enter(self, name):
        def hook(mod, args):
            self.stack.append(name)
        return hook

    def _leave(self, mod, args, out):
        self.stack.pop()

    def pack(self, t: torch.Tensor):
        key = storage_key(t)
        kind = "activation"
        what = ""
        if key in self.param_keys:
            kind, what = "parameter itself", self.param_keys[key]
        else:
            name = _cast_of_parameter(t.grad_fn, self.param_names)
            if name is not None:
                kind, what = "weight copy (autocast)", name
        nbytes = t.untyped_storage().nbytes()
        counted = 0 if (kind == "parameter itself" or key in self.seen) else nbytes
        self.seen.add(key)
        self.rows.append({"module": self.stack[-1], "site": _code_site(), "kind": kind, "what": what,
                          "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                          "view_bytes": t.numel() * t.element_size(), "storage_bytes": nbytes, "bytes": counted})
        return t

    def close(self):
        for h in self.handles:
            h.remove()


def make_config(args):
    from elmanlab.sizing import model_config
    opts = {}
    from elmanlab.cli.common import model_option_fields
    from elmanlab.config import field_type
    fields = model_option_fields()
    for kv in args.opt or []:
        key, _, val = kv.partition("=")
        if key not in fields or not val:
            raise SystemExit(f"error: --opt {kv!r}: write key=value with a family option as key")
        typ = field_type(fields[key][0])
        opts[key] = (val.lower() in ("1", "true", "yes")) if typ is bool else typ(val)
    if args.params:
        return model_config(args.model, params=args.params, depth=args.depth, options=opts)
    return model_config(args.model, dim=args.dim, depth=args.depth, options=opts)


def _block_of(module: str):
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1]), ".".join(parts[2:]) or "(block)"
    return None, module


def count(cfg, batch: int = 16, seq: int = 512, mode: str = "fake", cuda_rules: bool = True,
          cuda_ops: bool = True, seed: int = 0, e88_kernel: str = "v3") -> dict:
    """One forward (and the loss) of the LM at ``batch`` x ``seq`` under bf16 autocast; returns the
    saved-tensor rows, parameter facts and the plan of the E88 kernel."""
    from elmanlab.lm import LM
    torch.manual_seed(seed)
    E88ShapeBackend.plans = []
    E88ShapeBackend.kernel = e88_kernel
    fake = None
    if mode == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode
        fake = FakeTensorMode(allow_non_fake_inputs=True)
    rules = CudaAutocastRules() if cuda_rules else None
    with (fake or contextlib.nullcontext()):
        model = LM(cfg)
        model.train()
        idx = torch.randint(0, 256, (batch, seq + 1))
        counter = SavedTensorCounter(model)
        with (cuda_paths() if cuda_ops else contextlib.nullcontext()), \
                torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), \
                (rules or contextlib.nullcontext()):
            _, loss = model(idx[:, :-1], idx[:, 1:])
        counter.close()
        params = [(n, p.numel(), p.element_size()) for n, p in model.named_parameters()]
    return {"rows": counter.rows, "params": params, "e88_plans": E88ShapeBackend.plans,
            "autocast_rules_applied": dict(rules.changed) if rules else {}, "loss_dtype": str(loss.dtype)}


def breakdown(cfg, counted: dict, batch: int, seq: int, measured_gb: float | None = None) -> dict:
    """The component table from :func:`count`'s rows."""
    P = sum(n * s for _, n, s in counted["params"])
    n_params = sum(n for _, n, _ in counted["params"])
    rows = counted["rows"]
    saved = sum(r["bytes"] for r in rows)
    per_layer = collections.defaultdict(int)
    items = collections.OrderedDict()
    for r in rows:
        blk, rel = _block_of(r["module"])
        per_layer["outside blocks" if blk is None else f"block {blk}"] += r["bytes"]
        key = (blk is not None, rel, r["site"], r["kind"], r["what"].split(".", 2)[-1] if blk is not None else r["what"],
               r["dtype"], tuple(r["shape"]))
        it = items.setdefault(key, {"in_blocks": blk is not None, "module": rel, "site": r["site"], "kind": r["kind"],
                                    "what": key[4], "dtype": r["dtype"], "shape": r["shape"], "count": 0,
                                    "bytes": 0, "storage_bytes": r["storage_bytes"]})
        it["count"] += 1
        it["bytes"] += r["bytes"]
    items = sorted(items.values(), key=lambda i: -i["bytes"])
    ckpt = sum(r["bytes"] for r in rows if r["module"].endswith("layer") and r["dtype"] == "float32"
               and len(r["shape"]) == 5)
    weight_copies = sum(r["bytes"] for r in rows if r["kind"] == "weight copy (autocast)")
    plans = counted["e88_plans"]
    ckpt_analytic = 0
    if plans:
        o = cfg.options
        H, n, m = o.n_heads, o.n_state, max(1, int(round(o.n_state * o.expansion)))
        ckpt_analytic = cfg.depth * batch * H * (-(-seq // plans[0]["C"])) * m * n * 4
    comps = [("parameters (fp32)", P), ("optimizer z + exp_avg_sq (fp32)", 2 * P),
             ("saved: E88 kernel checkpoints", ckpt), ("saved: bf16 weight copies (autocast, no cache)", weight_copies),
             ("saved: other activations", saved - ckpt - weight_copies)]
    total = sum(b for _, b in comps)
    out = {"model": cfg.model, "dim": cfg.dim, "depth": cfg.depth, "options": {k: v for k, v in vars(cfg.options).items()},
           "params": n_params, "batch": batch, "seq_len": seq, "param_bytes": P, "saved_bytes": saved,
           "components": [{"component": c, "bytes": b, "share": b / total} for c, b in comps],
           "total_bytes": total, "per_layer": dict(per_layer), "items": items,
           "e88_plan": plans[0] if plans else None, "e88_ckpt_analytic_bytes": ckpt_analytic,
           "gradient_bytes": P, "optimizer_step_transient_bytes": P,
           "autocast_rules_applied": counted["autocast_rules_applied"]}
    if measured_gb is not None:
        out["measured_bytes"] = measured_gb * 1e9
        out["unexplained_bytes"] = measured_gb * 1e9 - total
    return out


def gb(x: float) -> str:
    return f"{x / 1e9:7.2f} GB"


def render(b: dict, top: int = 14) -> str:
    lines = [f"{b['model']} {b['dim']}x{b['depth']} ({b['params'] / 1e6:.0f}M params), B{b['batch']} x T{b['seq_len']}, "
             f"bf16 autocast (CUDA rules), CUDA op stand-ins", "",
             "| component | bytes | share |", "|---|---:|---:|"]
    for c in b["components"]:
        lines.append(f"| {c['component']} | {gb(c['bytes'])} | {100 * c['share']:5.1f}% |")
    lines.append(f"| **peak estimate (start of backward)** | {gb(b['total_bytes'])} | 100.0% |")
    lines.append(f"| not at that peak: gradients (fp32), allocated as the backward frees activations | "
                 f"{gb(b['gradient_bytes'])} | |")
    lines.append(f"| not at that peak: optimizer step's foreach denominator | "
                 f"{gb(b['optimizer_step_transient_bytes'])} | |")
    if "measured_bytes" in b:
        lines.append(f"| measured peak (max_memory_allocated) | {gb(b['measured_bytes'])} | |")
        lines.append(f"| not explained by the count | {gb(b['unexplained_bytes'])} | "
                     f"{100 * b['unexplained_bytes'] / b['measured_bytes']:5.1f}% of measured |")
    if b["e88_plan"]:
        p = b["e88_plan"]
        how = (f"{p['blocks_per_sm']} blocks/SM, {p['waves']} waves, {p['smem']} B smem; register cap "
               f"{'inferred from measured plans' if p['register_cap_known'] else 'unknown: shared memory only'}"
               if p["kernel"] == "v3" else f"{p['smem']} B of its 64 KB budget")
        lines += ["", f"E88 {p['kernel']} plan (port, H200): q/k/v {p['dtype']}, C = {p['C']} ({how}); "
                      f"checkpoints {gb(b['e88_ckpt_analytic_bytes'])} analytically "
                      f"(depth x B x H x ceil(T/C) x m x n x 4)"]
    depth = b["depth"]
    lines += ["", f"Largest saved tensors (per block items summed over {depth} blocks):", "",
              "| where (module, code) | tensor | dtype | x | bytes |", "|---|---|---|---:|---:|"]
    for it in b["items"][:top]:
        if not it["bytes"]:
            continue
        what = it["kind"] + (f" {it['what']}" if it["what"] else "")
        lines.append(f"| {it['module']} @ {it['site']} | {what} {it['shape']} | {it['dtype']} | {it['count']} | "
                     f"{gb(it['bytes'])} |")
    if b["autocast_rules_applied"]:
        lines += ["", "CUDA autocast rules applied: " + "; ".join(f"{k} x{v}" for k, v in b["autocast_rules_applied"].items())]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--params", help="parameter target (solved), e.g. 400M")
    ap.add_argument("--dim", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--opt", action="append", help="family option key=value (repeat)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--mode", choices=("fake", "real"), default="fake")
    ap.add_argument("--autocast", choices=("cuda", "cpu"), default="cuda",
                    help="cuda: CUDA autocast's rules where they differ from the CPU's (default)")
    ap.add_argument("--e88-kernel", choices=("v2", "v3"), default="v3",
                    help="whose checkpoint interval E88 uses (v3: today's default; v2: before 2026-12-03)")
    ap.add_argument("--e88-plain-normalize", action="store_true",
                    help="E88's q/k through F.normalize, as before layers/e88.py's l2_normalize (for measurements "
                         "taken before it)")
    ap.add_argument("--measured-gb", type=float, help="measured peak to compare with (GB = 1e9 bytes)")
    ap.add_argument("--json", help="write the breakdown here")
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args(argv)
    if (args.params is None) == (args.dim is None):
        ap.error("give --params or --dim (with --depth)")
    cfg = make_config(args)
    if args.e88_plain_normalize:
        import elmanlab.layers.e88 as le88
        le88.l2_normalize = lambda x: F.normalize(x, dim=-1)
    counted = count(cfg, args.batch, args.seq, args.mode, cuda_rules=args.autocast == "cuda", e88_kernel=args.e88_kernel)
    b = breakdown(cfg, counted, args.batch, args.seq, args.measured_gb)
    print(render(b, args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(b, indent=1, default=str))
    return b


if __name__ == "__main__":
    main()
