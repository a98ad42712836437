"""Memory-lean Triton scan for h_t = a_t h_{t-1} + b_t, with minGRU / minLSTM gates fused in.

Imported only on the first CUDA call (see ``elmanlab.ops.scan.fast``): it imports triton.

One program owns a block of BD channels of one sequence and walks the time axis in chunks of BT
steps; inside a chunk the recurrence is an associative scan over pairs (a, b) with
(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2). Arithmetic is float32 throughout.

Three modes (MODE constexpr):
  0  raw:     a, b given as [B, T, D] tensors (the ``linear_scan`` contract)
  1  minGRU:  p = [h~, z_logit] ([B, T, 2D]); a = sigmoid(-z), b = sigmoid(z) g(h~)
  2  minLSTM: p = [f, i, h~]    ([B, T, 3D]); d = logsigmoid(f) - logsigmoid(i); a = sigmoid(d),
              b = sigmoid(-d) g(h~)
with g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0). In modes 1 and 2 nothing but the raw projection,
the per-chunk start states (B x T/BT x D floats) and the initial state are kept for the backward:
the gates and the states are recomputed there, so the layer's activation memory is the projection
alone (the log-space form keeps about ten [B, T, D] float32 tensors per layer).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _gplus(x):
    return tl.where(x >= 0, x + 0.5, tl.sigmoid(x))


@triton.jit
def _load_ab(A, Bx, P, base_ab, base_p, t, d, T, D, MODE: tl.constexpr, VALID_LO):
    """Load (a, b) at rows t (tile [BT, BD]) as float32; rows outside [VALID_LO, T) give (1, 0)."""
    mask = (t[:, None] >= VALID_LO) & (t[:, None] < T) & (d[None, :] < D)
    if MODE == 0:
        off = base_ab + t[:, None] * D + d[None, :]
        a = tl.load(A + off, mask=mask, other=1.0).to(tl.float32)
        b = tl.load(Bx + off, mask=mask, other=0.0).to(tl.float32)
    elif MODE == 1:
        off = base_p + t[:, None] * (2 * D) + d[None, :]
        ht = tl.load(P + off, mask=mask, other=0.0).to(tl.float32)
        zg = tl.load(P + off + D, mask=mask, other=0.0).to(tl.float32)
        z = tl.sigmoid(zg)
        a = tl.where(mask, 1.0 - z, 1.0)
        b = tl.where(mask, z * _gplus(ht), 0.0)
    else:
        off = base_p + t[:, None] * (3 * D) + d[None, :]
        fg = tl.load(P + off, mask=mask, other=0.0).to(tl.float32)
        ig = tl.load(P + off + D, mask=mask, other=0.0).to(tl.float32)
        ht = tl.load(P + off + 2 * D, mask=mask, other=0.0).to(tl.float32)
        # d = logsigmoid(f) - logsigmoid(i), stable: logsigmoid(x) = min(x, 0) - log(1 + exp(-|x|))
        lf = tl.minimum(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg)))
        li = tl.minimum(ig, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(ig)))
        dd = lf - li
        a = tl.where(mask, tl.sigmoid(dd), 1.0)
        b = tl.where(mask, tl.sigmoid(-dd) * _gplus(ht), 0.0)
    return a, b


@triton.jit
def _scan_fwd_kernel(A, Bx, P, H0, Hout, HT, CS, T, D, NC,
                     MODE: tl.constexpr, HAS_H0: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    dmask = d < D
    rows = tl.arange(0, BT)
    NP: tl.constexpr = 1 if MODE == 0 else (2 if MODE == 1 else 3)
    base_ab = pid_b * T * D
    base_p = pid_b * T * (NP * D)
    if HAS_H0:
        h = tl.load(H0 + pid_b * D + d, mask=dmask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BD], dtype=tl.float32)
    for c in tl.range(0, NC):
        tl.store(CS + (pid_b * NC + c) * D + d, h, mask=dmask)
        t = c * BT + rows
        a, b = _load_ab(A, Bx, P, base_ab, base_p, t, d, T, D, MODE, 0)
        ac, bc = tl.associative_scan((a, b), 0, _combine)
        ht = bc + ac * h[None, :]
        omask = (t[:, None] < T) & dmask[None, :]
        tl.store(Hout + base_ab + t[:, None] * D + d[None, :], ht.to(Hout.dtype.element_ty), mask=omask)
        # padded rows carry the last valid state unchanged, so the last row is h at min(T, end) - 1
        h = tl.sum(tl.where(rows[:, None] == BT - 1, ht, 0.0), axis=0)
    tl.store(HT + pid_b * D + d, h, mask=dmask)


@triton.jit
def _scan_bwd_kernel(A, Bx, P, CS, DHout, DHT, DA, DB, DP, DH0, T, D, NC,
                     MODE: tl.constexpr, HAS_DHT: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    dmask = d < D
    rows = tl.arange(0, BT)
    NP: tl.constexpr = 1 if MODE == 0 else (2 if MODE == 1 else 3)
    base_ab = pid_b * T * D
    base_p = pid_b * T * (NP * D)
    if HAS_DHT:
        carry = tl.load(DHT + pid_b * D + d, mask=dmask, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BD], dtype=tl.float32)
    a0 = tl.zeros([BD], dtype=tl.float32)
    for ci in tl.range(0, NC):
        c = NC - 1 - ci
        t0 = c * BT
        t = t0 + rows
        omask = (t[:, None] < T) & dmask[None, :]
        go = tl.load(DHout + base_ab + t[:, None] * D + d[None, :], mask=omask, other=0.0).to(tl.float32)
        # a_{t+1} (1 past the end: the final state's gradient enters unchanged)
        an, _bn = _load_ab(A, Bx, P, base_ab, base_p, t + 1, d, T, D, MODE, 0)
        acr, dh = tl.associative_scan((an, go), 0, _combine, reverse=True)
        dh = dh + acr * carry[None, :]
        carry = tl.sum(tl.where(rows[:, None] == 0, dh, 0.0), axis=0)
        # h_{t-1}: scan of the rows shifted by one, from the chunk's start state
        hs = tl.load(CS + (pid_b * NC + c) * D + d, mask=dmask, other=0.0)
        ap, bp = _load_ab(A, Bx, P, base_ab, base_p, t - 1, d, T, D, MODE, t0)
        apc, bpc = tl.associative_scan((ap, bp), 0, _combine)
        hprev = bpc + apc * hs[None, :]
        da = dh * hprev
        db = dh
        if MODE == 0:
            off = base_ab + t[:, None] * D + d[None, :]
            tl.store(DA + off, da.to(DA.dtype.element_ty), mask=omask)
            tl.store(DB + off, db.to(DB.dtype.element_ty), mask=omask)
            a_cur = tl.load(A + off, mask=omask, other=0.0).to(tl.float32)
        elif MODE == 1:
            off = base_p + t[:, None] * (2 * D) + d[None, :]
            ht = tl.load(P + off, mask=omask, other=0.0).to(tl.float32)
            zg = tl.load(P + off + D, mask=omask, other=0.0).to(tl.float32)
            z = tl.sigmoid(zg)
            gh = _gplus(ht)
            sh = tl.sigmoid(ht)
            dg = tl.where(ht >= 0, 1.0, sh * (1.0 - sh))
            dzg = z * (1.0 - z) * (db * gh - da)
            dht = db * z * dg
            tl.store(DP + off, dht.to(DP.dtype.element_ty), mask=omask)
            tl.store(DP + off + D, dzg.to(DP.dtype.element_ty), mask=omask)
            a_cur = 1.0 - z
        else:
            off = base_p + t[:, None] * (3 * D) + d[None, :]
            fg = tl.load(P + off, mask=omask, other=0.0).to(tl.float32)
            ig = tl.load(P + off + D, mask=omask, other=0.0).to(tl.float32)
            ht = tl.load(P + off + 2 * D, mask=omask, other=0.0).to(tl.float32)
            lf = tl.minimum(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg)))
            li = tl.minimum(ig, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(ig)))
            dd = lf - li
            a_cur = tl.sigmoid(dd)
            gh = _gplus(ht)
            sh = tl.sigmoid(ht)
            dg = tl.where(ht >= 0, 1.0, sh * (1.0 - sh))
            ddd = a_cur * (1.0 - a_cur) * (da - db * gh)
            tl.store(DP + off, (ddd * tl.sigmoid(-fg)).to(DP.dtype.element_ty), mask=omask)
            tl.store(DP + off + D, (-ddd * tl.sigmoid(-ig)).to(DP.dtype.element_ty), mask=omask)
            tl.store(DP + off + 2 * D, (db * (1.0 - a_cur) * dg).to(DP.dtype.element_ty), mask=omask)
        a0 = tl.sum(tl.where(rows[:, None] == 0, a_cur, 0.0), axis=0)
    # dL/dh0 = a_0 * dL/dh_0
    tl.store(DH0 + pid_b * D + d, a0 * carry, mask=dmask)


_BT, _BD = 64, 64


def _grid(B, D):
    return (triton.cdiv(D, _BD), B)


def _n_proj(mode: int) -> int:
    return {0: 1, 1: 2, 2: 3}[mode]


class _ScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mode, a, b, p, h0):
        if mode == 0:
            B, T, D = b.shape
            out_dtype = torch.promote_types(a.dtype, b.dtype)
            dev = b.device
        else:
            B, T, ND = p.shape
            D = ND // _n_proj(mode)
            out_dtype = p.dtype
            dev = p.device
        NC = max(1, triton.cdiv(T, _BT))
        h = torch.empty(B, T, D, device=dev, dtype=out_dtype)
        hT = torch.empty(B, D, device=dev, dtype=torch.float32)
        cs = torch.empty(B, NC, D, device=dev, dtype=torch.float32)
        dummy = hT
        _scan_fwd_kernel[_grid(B, D)](
            a if mode == 0 else dummy, b if mode == 0 else dummy, p if mode != 0 else dummy,
            h0 if h0 is not None else dummy, h, hT, cs, T, D, NC,
            MODE=mode, HAS_H0=h0 is not None, BT=_BT, BD=_BD, num_warps=4)
        ctx.mode, ctx.shape, ctx.has_h0 = mode, (B, T, D, NC), h0 is not None
        ctx.h0_dtype = None if h0 is None else h0.dtype
        ctx.save_for_backward(a, b, p, cs)
        return h, hT

    @staticmethod
    def backward(ctx, dh, dhT):
        a, b, p, cs = ctx.saved_tensors
        mode = ctx.mode
        B, T, D, NC = ctx.shape
        dh = dh.contiguous() if dh is not None else torch.zeros(B, T, D, device=cs.device, dtype=torch.float32)
        dev = cs.device
        dh0 = torch.empty(B, D, device=dev, dtype=torch.float32)
        da = db = dp = None
        if mode == 0:
            da = torch.empty_like(a)
            db = torch.empty_like(b)
        else:
            dp = torch.empty_like(p)
        dummy = dh0
        _scan_bwd_kernel[_grid(B, D)](
            a if mode == 0 else dummy, b if mode == 0 else dummy, p if mode != 0 else dummy, cs,
            dh, dhT.contiguous() if dhT is not None else dummy,
            da if da is not None else dummy, db if db is not None else dummy,
            dp if dp is not None else dummy, dh0, T, D, NC,
            MODE=mode, HAS_DHT=dhT is not None, BT=_BT, BD=_BD, num_warps=4)
        dh0 = dh0.to(ctx.h0_dtype) if ctx.has_h0 else None
        return None, da, db, dp, dh0


def _prep_h0(h0, B, D):
    if h0 is None:
        return None
    return h0.reshape(B, D).contiguous()


def linear_scan_triton(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None):
    """a, b [B, T, D] -> (h [B, T, D] in b's dtype, h_T [B, D]); float32 arithmetic."""
    B, T, D = b.shape
    a = a.expand_as(b).contiguous()
    b = b.contiguous()
    h, hT = _ScanFn.apply(0, a, b, None, _prep_h0(h0, B, D))
    return h.to(b.dtype), hT.to(b.dtype)


def minrnn_scan_triton(p: torch.Tensor, kind: str, h0: torch.Tensor | None = None):
    """p [B, T, n D] raw projection (n = 2 minGRU, 3 minLSTM) -> (h [B, T, D] in p's dtype, h_T fp32)."""
    mode = {"mingru": 1, "minlstm": 2}[kind]
    B, T, ND = p.shape
    D = ND // _n_proj(mode)
    return _ScanFn.apply(mode, None, None, p.contiguous(), _prep_h0(h0, B, D))
