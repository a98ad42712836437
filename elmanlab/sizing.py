"""Parameter counts, the target-parameter solver, state sizes and training FLOPs.

``count_params(cfg)`` is a closed form (per family, in each layer class) that the tests check
against the module itself. ``solve(model, target)`` picks the width (and, for E88, the number of
heads from the balance ratio) at a given or default depth so that the count lands within ``tol``
of the target. ``train_flops_per_token(cfg, seq_len)`` is the MFU numerator per token.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from elmanlab.config import NORMS, ModelConfig, make_options
from elmanlab.errors import ElmanlabError
from elmanlab.layers import get_family
from elmanlab.lm import VOCAB, mlp_hidden

_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}


def parse_count(text) -> int:
    """'100M' -> 100_000_000; also '1.5B', '500k', '2e8', 12345."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgbt]?)\s*", str(text).lower())
    if not m:
        raise ElmanlabError(f"cannot read parameter count {text!r}; write e.g. 100M, 1.5B or 250000")
    return int(round(float(m.group(1)) * _SUFFIX[m.group(2)]))


def format_count(n: float) -> str:
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suf}"
    return str(int(n))


def norm_params(cfg: ModelConfig) -> int:
    """Parameters of one of the wrapper's norms: RMSNorm dim (weight), LayerNorm 2 dim (weight, bias)."""
    return (2 if cfg.norm == "layer" else 1) * cfg.dim


def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count of ``LM(cfg)`` in closed form."""
    fam = cfg.family
    per_block = fam.param_count(cfg.dim, cfg.options) + norm_params(cfg)           # layer + its norm
    if cfg.mlp_ratio > 0:
        per_block += 3 * cfg.dim * mlp_hidden(cfg) + norm_params(cfg)
    embed = VOCAB * cfg.dim
    head = 0 if cfg.tie_embeddings else VOCAB * cfg.dim
    return embed + cfg.depth * per_block + norm_params(cfg) + head


def non_embedding_params(cfg: ModelConfig) -> int:
    return count_params(cfg) - VOCAB * cfg.dim * (1 if cfg.tie_embeddings else 2)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of ``LM(cfg)`` at sequence length ``seq_len``:
    6 x the parameters (every parameter in one multiply-add forward and two backward; the
    embedding counted too, as the MFU everywhere in elmanlab counts it) plus, for families with
    attention, 12 x depth x (n_heads x head_dim) x seq_len for the score and value products (the
    PaLM / nanoGPT convention: the full T x T products, not halved for the causal mask). The
    recurrent families' scans are not counted (as before: their MFU is 6 x params)."""
    fam = cfg.family
    return 6.0 * count_params(cfg) + cfg.depth * fam.attention_flops_per_token(cfg.dim, cfg.options, seq_len)


# Default depth by target size. The seeds' 400M configurations use E1 26 layers, Mamba2 22,
# minGRU / minLSTM 24, and E88 38 at 500M; smaller and larger targets scale with log(params).
# The transformer follows GPT practice (GPT-2 medium / Pythia-410M 24 layers at 350-400M,
# about 10 at 50M), and at least 6 layers below that (the log law reaches 2 near 10M).
_DEPTH_ANCHORS = {  # family -> (depth at 400M, depth at 50M[, the least default depth])
    "e1": (26, 12), "e33": (26, 12), "e42": (26, 12), "e88": (36, 16),
    "mamba2": (22, 12), "gdn": (22, 12), "mingru": (24, 12), "minlstm": (24, 12),
    "transformer": (24, 10, 6),
}


def default_depth(model: str, target: int) -> int:
    fam = get_family(model)
    d400, d50, *least = _DEPTH_ANCHORS[fam.name]
    slope = (d400 - d50) / math.log(400e6 / 50e6)
    d = d400 + slope * math.log(max(target, 1.0) / 400e6)
    return int(max(least[0] if least else 2, min(64, round(d))))


@dataclass
class SizeReport:
    model: str
    params: int
    non_embedding_params: int
    dim: int
    depth: int
    d_inner: int | None
    n_heads: int | None
    state_per_layer: int            # where state_grows: values per byte of context (a KV cache)
    conv_state_per_layer: int
    state_total: int                # state_per_layer x depth (per byte of context where state_grows)
    options: dict
    target: int | None = None
    error_pct: float | None = None
    mlp_ratio: float = 0.0
    state_grows: bool = False
    tie_embeddings: bool = False
    norm: str = "rms"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def state_text(self, seq_len: int = 512, total: bool = False) -> str:
        """The state per layer (or of all layers) in words: '1,760 values', or for a KV cache
        '2,048 values per byte of context (KV cache; 1,048,576 at seq_len 512)'."""
        n = self.state_total if total else self.state_per_layer
        if not self.state_grows:
            return f"{n:,} values"
        return f"{n:,} values per byte of context (KV cache; {n * seq_len:,} at seq_len {seq_len})"


def report(cfg: ModelConfig, target: int | None = None) -> SizeReport:
    fam = cfg.family
    p = count_params(cfg)
    st = fam.state_size(cfg.dim, cfg.options)
    return SizeReport(
        model=cfg.model, params=p, non_embedding_params=non_embedding_params(cfg), dim=cfg.dim,
        depth=cfg.depth, d_inner=fam.d_inner(cfg.dim, cfg.options), n_heads=fam.n_heads(cfg.dim, cfg.options),
        state_per_layer=st,
        conv_state_per_layer=fam.conv_state_size(cfg.dim, cfg.options), state_total=st * cfg.depth,
        options=dataclasses.asdict(cfg.options), target=target,
        error_pct=None if target is None else 100.0 * (p - target) / target, mlp_ratio=cfg.mlp_ratio,
        state_grows=fam.state_grows, tie_embeddings=cfg.tie_embeddings, norm=cfg.norm)


def solve(model: str, target, depth: int | None = None, options: dict | None = None,
          tol: float = 0.02, mlp_ratio: float | None = None, tie_embeddings: bool = False,
          norm: str = "rms") -> ModelConfig:
    """The width (and, without a given depth, the depth) that lands closest to ``target``.

    Widths are multiples of 64 when that lands within 1%; otherwise finer multiples (32, 16, 8;
    never below the family's own constraint) are tried and the closest taken. Without ``depth``,
    depths within 4 of the default are tried too (families whose heads come in coarse steps, like
    GDN's 256-wide heads, need that); the default depth wins whenever it lands within ``tol``.
    Raises a one-line error when nothing gets within ``tol``. ``mlp_ratio`` None: the family's
    default (``default_mlp_ratio``: the transformer's SwiGLU 8/3, none for the others). ``norm``: the
    wrapper's norm (rms or layer, see ModelConfig).
    """
    fam = get_family(model)
    target = parse_count(target)
    if target < 1:
        raise ElmanlabError(f"the parameter target must be positive, got {target}")
    options = dict(options or {})
    fam.resolve(512, make_options(fam.name, options))  # surface option errors before searching
    if norm not in NORMS:
        raise ElmanlabError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if depth is not None and depth < 1:
        raise ElmanlabError(f"depth must be >= 1, got {depth}")
    d0 = default_depth(fam.name, target) if depth is None else depth
    depths = [d0] if depth is not None else [d0] + [d for k in range(1, 5) for d in (d0 + k, d0 - k) if d >= 1]
    if depth is None:  # last resort (small targets, coarse families): any depth, nearest to d0 first
        depths += sorted((d for d in range(1, 65) if d not in depths), key=lambda d: (abs(d - d0), d))
    best = None
    for d in depths:
        cand = _solve_at_depth(fam, target, d, options, mlp_ratio, tie_embeddings, norm)
        if cand is None:
            continue
        if best is None or cand[0] < best[0] - 1e-12:
            best = cand
        if best[0] <= tol:
            return best[1]
    if best is None:
        raise ElmanlabError(f"cannot build {fam.name} near {format_count(target)}; check its options")
    err, cfg = best
    p = count_params(cfg)
    if p > target and cfg.dim <= 64:
        raise ElmanlabError(f"target {format_count(target)} is too small to build {fam.name}: even dim {cfg.dim}, "
                            f"depth {cfg.depth} has {format_count(p)} parameters; ask for more")
    hint = "another depth or target" if depth is not None else "another target"
    raise ElmanlabError(f"cannot size {fam.name} to {format_count(target)} within {100 * tol:.0f}%: the closest is "
                        f"dim {cfg.dim}, depth {cfg.depth} with {format_count(p)} ({100 * err:.1f}% off); try {hint}")


def _solve_at_depth(fam, target, depth, options, mlp_ratio, tie_embeddings, norm="rms"):
    def build(dim):
        try:
            return ModelConfig(fam.name, dim, depth, make_options(fam.name, options), mlp_ratio, tie_embeddings,
                               norm)
        except ElmanlabError:
            return None

    def err(cfg):
        return abs(count_params(cfg) - target) / target

    best = None
    for mult in (64, 32, 16, 8):
        if mult < fam.dim_multiple:
            break
        # coarse: params grow about quadratically with dim; bisect on multiples of mult, then scan
        # a window around the crossing (derived head counts make the count step, not rise smoothly)
        lo_k, hi_k = 1, 1
        while (c := build(hi_k * mult)) is None or count_params(c) < target:
            lo_k, hi_k = hi_k, hi_k * 2
            if hi_k * mult > 1 << 17:
                return best
        while hi_k - lo_k > 1:
            mid = (lo_k + hi_k) // 2
            c = build(mid * mult)
            if c is not None and count_params(c) < target:
                lo_k = mid
            else:
                hi_k = mid
        for k in range(max(1, int(lo_k * 0.8)), int(hi_k * 1.25) + 2):
            c = build(k * mult)
            if c is not None and (best is None or err(c) < best[0] - 1e-12):
                best = (err(c), c)
        if best is not None and best[0] <= 0.01:
            break
    return best


def model_config(model: str, params=None, dim: int | None = None, depth: int | None = None,
                 options: dict | None = None, mlp_ratio: float | None = None,
                 tie_embeddings: bool = False, norm: str = "rms") -> ModelConfig:
    """A config from either a parameter target (solved) or an explicit width; ``mlp_ratio`` None:
    the family's default."""
    if (params is None) == (dim is None):
        raise ElmanlabError("give exactly one of a parameter target (--params) or a width (--dim)")
    if params is not None:
        return solve(model, params, depth, options, mlp_ratio=mlp_ratio, tie_embeddings=tie_embeddings,
                     norm=norm)
    if depth is None:
        raise ElmanlabError("--dim needs --depth (or give --params to pick both)")
    return ModelConfig(model, int(dim), int(depth), make_options(model, options or {}), mlp_ratio,
                       tie_embeddings, norm)
