"""What pure bf16 does to Schedule-Free AdamW, on the CPU (docs/reference/ekg-elman-differences.md).

ekg/elman's 400M runs cast the whole model to bf16 (``model.cuda().bfloat16()``), so Schedule-Free
AdamW updated bf16 weights and kept its state (``z``, ``exp_avg_sq``) in bf16; elmanlab keeps fp32
master weights under bf16 autocast. Two measurements at the reference's lr 3e-4 and weight decay 0.1
(on every parameter, as the reference's optimizer call):

1. single tensors at the reference's magnitudes (a norm gain at 1.0, E1's W_x and W_h entries under
   its xavier init), 1,500 steps of a fixed gradient direction plus noise: the mean distance each
   element moved, in fp32 and in bf16; and whether Adam's second moment decays after a burst;
2. tiny LMs on the embedded corpus (dim 96, depth 4, ``--steps`` steps of 8 x 128 bytes), the same
   model and batches once in fp32 and once cast to bf16: the mean of the last 100 training losses.
   Mamba2's SSD runs in fp32 inside (as mamba_ssm's kernel does with bf16 inputs; elmanlab's CPU
   reference does not take bf16). Also how much that loss fell over the last third of the steps (the
   reference's Mamba2 and E1 improved half as much as the lab's from step 900 to 1,500, its minGRU as
   much: docs/results/reference-400m/README.md, finding 3), and the share of the parameter elements of
   magnitude 0.5 or more (norm gains, Mamba2's A_log, dt_bias and D) that never changed in bf16.

    python3 benchmarks/pure_bf16_cpu.py              # both, about 10 minutes on two cores
    python3 benchmarks/pure_bf16_cpu.py --skip-lm    # the single tensors only, seconds
    python3 benchmarks/pure_bf16_cpu.py --skip-tensors --models mamba2,mingru --steps 1500
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def _optimizer(params):
    import schedulefree
    opt = schedulefree.AdamWScheduleFree(params, lr=3e-4, weight_decay=0.1, foreach=False)
    opt.train()
    return opt


def single_tensors(n: int = 4096, steps: int = 1500) -> None:
    print(f"## Single tensors: {steps} steps, lr 3e-4, weight decay 0.1\n")
    print("| parameter | fp32: mean distance moved | bf16: mean distance moved | bf16: elements that ever changed |")
    print("|---|---|---|---|")
    cases = [("a norm gain at 1.0", torch.ones(n)), ("entries of std 0.024 (E1's W_x, reference init)", None),
             ("entries of std 0.0024 (E1's W_h, reference init)", None)]
    torch.manual_seed(0)
    cases[1] = (cases[1][0], 0.024 * torch.randn(n))
    cases[2] = (cases[2][0], 0.0024 * torch.randn(n))
    for label, init in cases:
        moved = {}
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(1)
            p = torch.nn.Parameter(init.clone().to(dtype))
            opt = _optimizer([p])
            g_dir = torch.randn(n)
            prev = p.detach().float().clone()
            changed = torch.zeros(n, dtype=torch.bool)
            for _ in range(steps):
                p.grad = (0.01 * (g_dir + torch.randn(n))).to(dtype)
                opt.step()
                cur = p.detach().float()
                changed |= cur != prev
                prev = cur.clone()
            moved[dtype] = ((p.detach().float() - init).abs().mean().item(), changed.float().mean().item())
        print(f"| {label} | {moved[torch.float32][0]:.3f} | {moved[torch.bfloat16][0]:.3f} | "
              f"{100 * moved[torch.bfloat16][1]:.0f}% |")
    print()
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(2)
        p = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
        opt = _optimizer([p])
        for t in range(1000):
            p.grad = ((1.0 if t < 10 else 0.01) * torch.randn(n)).to(dtype)
            opt.step()
        v = opt.state[p]["exp_avg_sq"].float().mean().item()
        print(f"exp_avg_sq after 10 steps of |g| ~ 1 and 990 of |g| ~ 0.01, {str(dtype)[6:]}: {v:.2e}")
    print(f"(the moving average itself: about {0.999 ** 990 * 10 * 1e-3 + 1e-4:.1e})\n")


def _ssd_in_fp32():
    """Mamba2's SSD on bf16 inputs computed in fp32 inside (mamba_ssm's kernel does so)."""
    import elmanlab.layers.mamba2 as m
    inner = m.ssd

    def ssd(x, dt, A, Bm, Cm, D, S0, chunk, **kw):
        f = lambda t: t.float() if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
        y, S = inner(f(x), f(dt), f(A), f(Bm), f(Cm), f(D), S0, chunk, **{k: f(v) for k, v in kw.items()})
        return y.to(x.dtype), S
    m.ssd = ssd


def tiny_lms(steps: int, only: list[str] | None = None) -> None:
    from elmanlab.config import ModelConfig
    from elmanlab.data import open_bytes, resolve_data_path
    from elmanlab.lm import LM
    _ssd_in_fp32()
    data = np.asarray(open_bytes(resolve_data_path(None), progress=False))
    models = [("E1, this lab's defaults", "e1", {}, "rms", False),
              ("E1, the reference's layer (init reference, fixed spectral norm, LayerNorm, tied)", "e1",
               {"init": "reference", "spectral_norm": True, "spectral_mode": "fixed"}, "layer", True),
              ("Mamba2 (d_state 16, headdim 32, LayerNorm, tied)", "mamba2", {"d_state": 16, "headdim": 32},
               "layer", True),
              ("minGRU (LayerNorm, tied)", "mingru", {}, "layer", True)]
    models = [m for m in models if only is None or m[1] in only]
    marks = [steps // 3, 2 * steps // 3, steps]
    print(f"## Tiny LMs: dim 96, depth 4, {steps} steps of 8 x 128 bytes, last-100 training loss\n")
    print("Late = how much the last-100 loss fell from step " f"{marks[1]} to {marks[2]}; frozen = the share of "
          "parameter elements (weights of |w| >= 0.5: gains, Mamba2's A_log, dt_bias, D) that never changed.\n")
    print("| model | fp32 | pure bf16 | fp32 late | bf16 late | bf16 frozen (magnitude >= 0.5) |")
    print("|---|---|---|---|---|---|")
    for label, model, opts, norm, tie in models:
        res, late, frozen = {}, {}, None
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            rng = np.random.default_rng(42)
            lm = LM(ModelConfig(model, 96, 4, dict(opts), norm=norm, tie_embeddings=tie)).to(dtype).train()
            big0 = [(p, p.detach().clone()) for p in lm.parameters()]
            opt = _optimizer(lm.parameters())
            losses = []
            for _ in range(steps):
                pos = rng.integers(0, len(data) - 130, 8)
                x = torch.from_numpy(np.stack([data[p:p + 129] for p in pos]).astype(np.int64))
                _, loss = lm(x[:, :-1], x[:, 1:])
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            res[dtype] = sum(losses[-100:]) / 100
            at = lambda k: sum(losses[k - 100:k]) / 100                               # noqa: E731
            late[dtype] = at(marks[1]) - at(marks[2])
            if dtype == torch.bfloat16:
                masks = [(p0.abs() >= 0.5, p.detach() == p0) for p, p0 in big0]
                n_big = sum(int(m.sum()) for m, _ in masks)
                frozen = sum(int((m & same).sum()) for m, same in masks) / max(n_big, 1)
        print(f"| {label} | {res[torch.float32]:.3f} | {res[torch.bfloat16]:.3f} | {late[torch.float32]:.3f} "
              f"| {late[torch.bfloat16]:.3f} | {frozen:.0%} |", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="steps of each tiny LM run")
    ap.add_argument("--skip-lm", action="store_true", help="only the single-tensor measurements")
    ap.add_argument("--skip-tensors", action="store_true", help="only the tiny LMs")
    ap.add_argument("--models", default=None, help="comma-separated families of the tiny LMs (default: e1, "
                    "mamba2, mingru)")
    args = ap.parse_args(argv)
    if args.steps < 300:
        ap.error("--steps must be at least 300 (the late phase is the last third, scored over 100 steps)")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.set_flush_denormal(True)
    if not args.skip_tensors:
        single_tensors()
    if not args.skip_lm:
        tiny_lms(args.steps, args.models.split(",") if args.models else None)


if __name__ == "__main__":
    main()
