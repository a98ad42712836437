"""Helpers shared by the op tests (tests/ops/) and the layers' fast-path tests: gradients against
fixed random cotangents, seeded CUDA generators, and the relative-error comparison of a fast path
with its float64 reference (``_compare`` for the Elman / E88 kernels, ``_leaf`` / ``_run`` /
``_check`` for the baselines' library kernels and the layers)."""
import zlib

import pytest
import torch

from conftest import rel_err
from elmanlab.ops import reset_implementations_used

D64 = torch.float64
LENGTHS = [1, 7, 63, 130]   # sequence lengths of the reference-against-definition tests
TOL = 1e-2          # the baselines' fast paths in bf16 against float64
DEV = "cuda"


def _grads(outs, inputs, seed):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs)
    return torch.autograd.grad(loss, [x for x in inputs if x is not None])


def _seed(*xs):
    """A generator seeded from the case (crc32, not hash(): str hashes change between processes)."""
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(xs).encode()))


def _compare(outs, refs, ins, ins64, tol, label):
    g = torch.Generator(device="cuda").manual_seed(1234)
    ws = [torch.randn(r.shape, generator=g, device="cuda", dtype=torch.float64) for r in refs]
    for name, o, r in zip(("out", "state"), outs, refs):
        assert torch.isfinite(o).all(), f"{label}: {name} has non-finite values (unwritten?)"
        e = rel_err(o, r)
        assert e <= tol, f"{label}: {name} rel err {e:.2e} > {tol}"
    go = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(outs, ws)), [x for x in ins if x is not None])
    gr = torch.autograd.grad(sum((r * w).sum() for r, w in zip(refs, ws)), [x for x in ins64 if x is not None])
    names = [n for n, x in zip(label.split("|")[1].split(","), ins) if x is not None]
    for n, a, r in zip(names, go, gr):
        assert torch.isfinite(a).all(), f"{label}: grad {n} non-finite"
        e = rel_err(a, r)
        assert e <= tol, f"{label}: grad {n} rel err {e:.2e} > {tol}"


def _leaf(t, dtype):
    return t.detach().to(dtype).requires_grad_(True)


def _check(rel, name, outs, refs, tol=TOL, loose=None):
    errs = {}
    for key, o in outs.items():
        r = refs[key]
        assert o is not None and r is not None, f"{name}: missing {key}"
        assert torch.isfinite(o.float()).all(), f"{name}: {key} has non-finite values"
        errs[key] = rel(o, r)

    def limit(key):
        return next((t for part, t in (loose or {}).items() if key.endswith(part)), tol)
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= limit(k)}
    assert not bad, f"{name}: relative RMS error above {tol}: {bad} (all: { {k: f'{v:.1e}' for k, v in errs.items()} })"
    return errs


def _run(fn, inputs, names, dtype, grads_out):
    """Call fn on leaves of `inputs` in `dtype`; backprop fixed random cotangents; return outputs+grads."""
    leaves = [_leaf(x, dtype) if x is not None else None for x in inputs]
    out, state = fn(*leaves)
    loss = (out.double() * grads_out[0]).sum() + (state.double() * grads_out[1]).sum()
    loss.backward()
    res = {"out": out.detach(), "state": state.detach()}
    for n, leaf in zip(names, leaves):
        if leaf is not None:
            res["d" + n] = leaf.grad
    return res


def assert_fast_path_ran(cfg, expect: str | None = None) -> dict:
    """A GPU test cannot pass on the wrong path: what ran since the last
    ``reset_implementations_used()`` (recorded by the ops at run time) is the fast path the family's
    ``backend_info`` predicts for ``cfg`` (a ModelConfig), for its op and every fused helper, and
    every op recorded ran fast; ``expect``: the start of the family op's path when the test is about
    one kernel (e.g. cuDNN or the chunked form). Returns the record."""
    from elmanlab.ops import implementations_used
    fam = cfg.family
    info = fam.backend_info(cfg.dim, cfg.options)
    used = implementations_used()
    assert info["fast"], f"{fam.name}: no fast path here: {info}"
    want = {fam.op: info["path"], **{n: h["path"] for n, h in info.get("helpers", {}).items()}}
    for op, path in want.items():
        assert used.get(op) == {"path": path, "paths": [path], "fast": True}, \
            f"{fam.name}: {op} ran {used.get(op)}, predicted {path!r}"
    slow = {op: r for op, r in used.items() if not r["fast"]}
    assert not slow, f"{fam.name}: slow paths ran: {slow}"
    if expect is not None:
        assert used[fam.op]["path"].startswith(expect), f"{fam.name}: ran {used[fam.op]['path']!r}, not {expect!r}"
    return used


# what implementations_used() records for one path (fast or the reference)
REF = {"path": "reference", "paths": ["reference"], "fast": False}


def one(path, fast=True):
    return {"path": path, "paths": [path], "fast": fast}


@pytest.fixture(autouse=True)
def _fresh_record():
    reset_implementations_used()
    yield
    reset_implementations_used()
