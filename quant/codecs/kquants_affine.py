"""K-quants with a scale and a min per sub-block: Q4_K, Q5_K (32-value sub-blocks) and Q2_K
(16-value sub-blocks), in 256-value super-blocks.

Each sub-block's (scale, min) comes from ggml's ``make_qkx2_quants`` search: a first guess
from the range, then ``nstep + 1`` candidate scales, each refit by weighted least squares
and kept if its weighted error is strictly lower. The sub-block scales and mins are then
quantized against the super-block's (stored as fp16), and the values requantized with
those. With an importance matrix ggml weighs each value by its importance times
sqrt(sigma2 + x^2) (sigma2: the super-block's mean square, doubled for Q4_K and Q5_K), runs
the same search with other steps (its ``make_qkx3_quants``), and fits the super-block
scales by ``make_qp_quants``, weighted by each sub-block's total weight. Tensors are laid
out position-first, ``(n, sub-blocks)``, so that the in-order float32 sums ggml's loops make
run over contiguous slices.
"""
from __future__ import annotations

import functools

import torch

from . import triton_search
from .base import BlockFields, BlockLayout, Codec, QType, Workspace, div_by, fp16_from_bytes, fp16_round, \
    importance_weights, inverse_or_zero, nearest_int, put_fp16, rdiv, seq_sum, sqrt_f32, sub_block_weights
from .fused import cpu_fused

QK_K = 256


@functools.cache  # asked for every candidate of every chunk
def _f32_numerator(rmin: float, rdelta: float, step: int, nmax: int) -> float:
    """``rmin + rdelta*is + nmax`` evaluated in float32, as C does with float operands."""
    def f(v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32)

    return float(f(rmin) + f(rdelta) * f(step) + f(nmax))


@cpu_fused
def _qkx2_step(x: torch.Tensor, w: torch.Tensor, hi: torch.Tensor, sum_w: torch.Tensor, sum_x: torch.Tensor,
               numerator: torch.Tensor, nmax: int, use_mad: bool, scale: torch.Tensor, offset: torch.Tensor,
               best_error: torch.Tensor, best_iscale: torch.Tensor, best_offset: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One candidate of ``make_qkx2_quants``: levels for ``numerator / (max - min)``, their
    weighted least-squares (scale, min), kept where the weighted error is strictly lower.
    The state is (scale, offset, best_error) and the (iscale, offset) that made the kept
    levels, so the levels themselves are rebuilt once at the end rather than carried."""
    iscale = numerator / (hi - offset)
    cand = torch.round(iscale * (x - offset)).clamp_(0, nmax)
    wl = w * cand
    sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * cand), seq_sum(wl * x)
    det = sum_w * sum_l2 - sum_l * sum_l
    ok = det > 0
    safe_det = torch.where(ok, det, 1.0)
    this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_det
    this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_det
    clip = this_min > 0
    this_scale = torch.where(clip, sum_xl / torch.where(clip, sum_l2, 1.0), this_scale)
    this_min = torch.where(clip, 0.0, this_min)
    cand_error = _weighted_error(x, w, this_scale, this_min, cand, use_mad)
    better = ok & (cand_error < best_error)
    return (torch.where(better, this_scale, scale), torch.where(better, this_min, offset),
            torch.where(better, cand_error, best_error), torch.where(better, iscale, best_iscale),
            torch.where(better, offset, best_offset))


def _weighted_error(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                    levels: torch.Tensor, use_mad: bool) -> torch.Tensor:
    diff = scale * levels + offset - x
    return seq_sum(w * (diff.abs() if use_mad else diff * diff))


def qkx2_weights(x: torch.Tensor, weights: str | torch.Tensor) -> torch.Tensor:
    """The weights ggml's callers give ``make_qkx2_quants`` for sub-blocks x (n, m), position-first:
    ``"rms+abs"`` (Q4_K, Q5_K) the sub-block's root mean square plus |x|, ``"abs"`` (Q2_K) |x|,
    or importance weights given (n, m)."""
    if isinstance(weights, torch.Tensor):
        return weights
    if weights == "abs":
        return x.abs()
    return sqrt_f32(seq_sum(x * x) / x.shape[0]) + x.abs()  # 32 values: the division is exact


def make_qkx2_quants(x: torch.Tensor, weights: str | torch.Tensor, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorised ``make_qkx2_quants`` over sub-blocks given position-first, ``x: (n, m)``,
    weighted as ``qkx2_weights`` says. With weights given it is also ``make_qkx3_quants``:
    the two differ only in what they do without weights.

    Returns (scale (m,), the_min (m,), L (n, m) int32), the_min being minus the offset.
    The candidates run in order, as in C: an accepted candidate moves the offset that the
    next ones start from.
    """
    numerators = [_f32_numerator(rmin, rdelta, step, nmax) for step in range(nstep + 1)]
    if triton_search.applies(x):
        return triton_search.qkx2(x, nmax, numerators, weights, use_mad)
    w = qkx2_weights(x, weights)
    hi = x.amax(dim=0)
    lo = _scan_min(x)
    lo = torch.where(lo > 0, 0.0, lo)  # "if (min > 0) min = 0"
    flat = hi == lo
    hi = torch.where(flat, lo + 1.0, hi)  # a flat sub-block keeps nothing; only avoid 0/0
    sum_w = seq_sum(w, from_zero=False)
    sum_x = seq_sum(w * x, from_zero=False)
    iscale = rdiv(nmax, hi - lo)
    scale = rdiv(1.0, iscale)
    best_error = _weighted_error(x, w, scale, lo, torch.round(iscale * (x - lo)).clamp_(0, nmax), use_mad)
    best_error = torch.where(flat, -torch.inf, best_error)  # nothing beats it: flat stays as is
    state = (scale, lo, best_error, iscale, lo)
    for value in numerators:
        numerator = torch.tensor(value, dtype=torch.float32, device=x.device)
        state = _qkx2_step(x, w, hi, sum_w, sum_x, numerator, nmax, use_mad, *state)
    scale, offset, _, iscale, level_offset = state
    levels = torch.round(iscale * (x - level_offset)).clamp_(0, nmax)
    # a flat sub-block: all levels 0, scale 0, min as found
    scale = torch.where(flat, 0.0, scale)
    levels = torch.where(flat, 0.0, levels)
    return scale, -offset, levels.to(torch.int32)


GROUP_MAX_EPS = 1e-15  # below this a super-block's scales count as all zero
QKX3 = (-0.9, 0.05, 36)  # make_qkx3_quants' rmin, rdelta, nstep in every importance path


def make_qp_quants(x: torch.Tensor, nmax: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qp_quants(n, nmax, x, L, w)`` over rows x, w: (nb, n) of non-negative values (a
    super-block's sub-block scales or mins, and their weights): a scale from the largest, the
    best of eight nearby by weighted error, then up to five in-order passes that move single
    levels where that raises the part explained. -> (scale (nb,), L (nb, n) int32).

    C stores levels as uint8 (a negative one wraps) and leaves a row once a pass changes
    nothing in it; passing again over a settled row changes nothing, so all passes run."""
    xt, wt = x.T.contiguous(), w.T.contiguous()  # position-first: in-order sums
    numerators = [_f32_numerator(0.0, 0.1, step, nmax) for step in (-4, -3, -2, -1, 1, 2, 3, 4)]  # (0.1f*is + nmax)
    if triton_search.applies(xt):
        scale, levels = triton_search.qp(xt, wt, nmax, numerators)
        return scale, levels.T.contiguous()
    top = xt.amax(dim=0).clamp(min=0.0)  # C scans MAX(max, x) from 0
    zero = top < GROUP_MAX_EPS
    top = torch.where(zero, 1.0, top)
    iscale = rdiv(float(nmax), top)
    first = (nearest_int(iscale * xt) & 0xFF).to(torch.float32)  # no clamp here
    scale = rdiv(1.0, iscale)
    best = _qp_error(xt, wt, scale, first)
    for numerator in numerators:
        cand = rdiv(numerator, top)
        cand_scale = rdiv(1.0, cand)
        err = _qp_error(xt, wt, cand_scale, nearest_int(cand * xt).clamp_(max=nmax).to(torch.float32))
        better = err < best
        best, iscale = torch.where(better, err, best), torch.where(better, cand, iscale)
    level = nearest_int(iscale * xt).clamp_(max=nmax)
    stored = level & 0xFF
    lf = level.to(torch.float32)
    sumlx, suml2 = seq_sum(wt * xt * lf), seq_sum(wt * lf * lf)
    for _ in range(5):
        for i in range(xt.shape[0]):
            li = stored[i].to(torch.float32)
            slx = sumlx - wt[i] * xt[i] * li
            sl2 = suml2 - wt[i] * li * li
            ok = (slx > 0) & (sl2 > 0)
            new_l = nearest_int(xt[i] * sl2 / torch.where(ok, slx, 1.0)).clamp_(max=nmax)
            ok &= new_l != stored[i]
            nf = new_l.to(torch.float32)
            slx = slx + wt[i] * xt[i] * nf
            sl2 = sl2 + wt[i] * nf * nf
            accept = ok & (slx * slx * suml2 > sumlx * sumlx * sl2)
            stored[i] = torch.where(accept, new_l & 0xFF, stored[i])
            sumlx, suml2 = torch.where(accept, slx, sumlx), torch.where(accept, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, stored).T.contiguous()


def _qp_error(xt: torch.Tensor, wt: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    diff = xt - scale * levels
    return seq_sum(wt * diff * diff)


def _scan_min(x: torch.Tensor) -> torch.Tensor:
    """The min of each column of x (n, m) as C's scan ``if (x[i] < min) min = x[i]`` finds it:
    of -0 and +0 the first it meets. The sign reaches Q4_1's and Q5_1's stored min."""
    lo = x.amin(dim=0)
    zero = (lo == 0).nonzero().reshape(-1)
    if zero.numel():
        cols = x[:, zero]
        first = (cols == 0).to(torch.uint8).argmax(dim=0)
        lo = lo.clone()
        lo[zero] = cols.gather(0, first[None])[0]
    return lo


def _super_scale(values: torch.Tensor) -> torch.Tensor:
    """``max(0, max(values))`` per super-block: C scans with ``if (v > m) m = v`` from 0."""
    top = values.amax(dim=1)
    return torch.where(top > 0, top, 0.0)


def _requantize(x: torch.Tensor, d: torch.Tensor, dm: torch.Tensor, levels: torch.Tensor, nmax: int) -> torch.Tensor:
    """Values against the stored (fp16) scales; sub-blocks whose scale is 0 keep the search's levels.

    ``x``: (n, m); ``d``, ``dm``: (m,); ``levels``: (n, m)."""
    fresh = nearest_int((x + dm) / torch.where(d != 0, d, 1.0)).clamp_(0, nmax)
    return torch.where(d != 0, fresh, levels)


def _position_first(x: torch.Tensor, sub: int) -> torch.Tensor:
    """(blocks, 256) -> (sub, blocks * 256/sub): sub-block positions first."""
    return x.reshape(-1, sub).T.contiguous()


def _block_major(levels: torch.Tensor, nb: int) -> torch.Tensor:
    """(sub, blocks * 256/sub) levels -> (blocks, 256)."""
    return levels.T.reshape(nb, QK_K)


class _Scale6Codec(Codec):
    """Q4_K and Q5_K: 8 sub-blocks of 32, 6-bit scales and mins packed in 12 bytes. The two
    differ in how they store the levels: ``pack_levels`` and ``unpack_levels``."""

    nmax: int
    rmin: float
    nstep: int
    chunk_elements = 1 << 19  # a step's passes over x, w and levels stay in a CPU's cache
    supports_imatrix = True

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        d, dmin, scales, levels = self.levels(x, weights)
        f = self.layout.split(out)
        put_fp16(f.d, d[:, None])
        put_fp16(f.dmin, dmin[:, None])
        f.scales.copy_(scales)
        self.pack_levels(f, levels)

    def levels(self, x: torch.Tensor, qw: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (d (nb,), dmin (nb,), both fp16-rounded, packed scales (nb, 12), levels (nb, 256));
        ``qw``: the values' importance (nb, 256), or None."""
        nb = x.shape[0]
        xs = _position_first(x, 32)
        if qw is None:
            scales, mins, levels = make_qkx2_quants(xs, "rms+abs", self.nmax, self.rmin, 0.1, self.nstep, False)
            scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
            max_scale, max_min = _super_scale(scales), _super_scale(mins)
            inv_scale, inv_min = inverse_or_zero(max_scale, 63.0), inverse_or_zero(max_min, 63.0)
            ls = (nearest_int(inv_scale[:, None] * scales) & 0xFF).clamp_(max=63)
            lm = (nearest_int(inv_min[:, None] * mins) & 0xFF).clamp_(max=63)
            d, dmin = fp16_round(div_by(max_scale, 63.0)), fp16_round(div_by(max_min, 63.0))
        else:
            weights = importance_weights(x, qw, 2.0)
            scales, mins, levels = make_qkx2_quants(xs, _position_first(weights, 32), self.nmax, *QKX3, False)
            sw = sub_block_weights(weights, 32)
            d, ls = make_qp_quants(scales.reshape(nb, 8), 63, sw)
            dmin, lm = make_qp_quants(mins.reshape(nb, 8), 63, sw)
            d, dmin = fp16_round(d), fp16_round(dmin)
        sub_d = (d[:, None] * ls.to(torch.float32)).reshape(-1)
        sub_dm = (dmin[:, None] * lm.to(torch.float32)).reshape(-1)
        levels = _requantize(xs, sub_d, sub_dm, levels, self.nmax)
        return d, dmin, pack_scale_min_k4(ls, lm), _block_major(levels, nb)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        nb = blocks.shape[0]
        f = self.layout.split(blocks)
        d, dmin = fp16_from_bytes(f.d), fp16_from_bytes(f.dmin)
        sc, m = unpack_scale_min_k4(f.scales)
        q = self.unpack_levels(f).reshape(nb, 8, 32).to(torch.float32)
        return ((d * sc.to(torch.float32))[..., None] * q - (dmin * m.to(torch.float32))[..., None]).reshape(nb, QK_K)


def pack_scale_min_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins (nb, 8) -> ggml's 12-byte layout."""
    ls, lm = ls.to(torch.int32), lm.to(torch.int32)
    low = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    high = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return torch.cat([low, mid, high], dim=1).to(torch.uint8)


def unpack_scale_min_k4(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = q.to(torch.int32)
    sc = torch.cat([q[:, :4] & 63, (q[:, 8:] & 0xF) | ((q[:, :4] >> 6) << 4)], dim=1)
    m = torch.cat([q[:, 4:8] & 63, (q[:, 8:] >> 4) | ((q[:, 4:8] >> 6) << 4)], dim=1)
    return sc, m


def _pack_nibble_pairs(levels: torch.Tensor) -> torch.Tensor:
    """(nb, 256) 4-bit levels -> (nb, 128): byte 32p+l = L[64p+l] | L[64p+32+l] << 4."""
    pairs = levels.reshape(-1, 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128).to(torch.uint8)


def _unpack_nibble_pairs(qs: torch.Tensor) -> torch.Tensor:
    q = qs.reshape(-1, 4, 1, 32).to(torch.int32)
    return torch.cat([q & 0xF, q >> 4], dim=2).reshape(-1, QK_K)


class Q4_K(_Scale6Codec, qtype=QType.Q4_K, layout=BlockLayout("block_q4_K", d=2, dmin=2, scales=12, qs=128)):
    nmax, rmin, nstep = 15, -1.0, 20

    def pack_levels(self, f: BlockFields, levels: torch.Tensor) -> None:
        f.qs.copy_(_pack_nibble_pairs(levels))

    def unpack_levels(self, f: BlockFields) -> torch.Tensor:
        return _unpack_nibble_pairs(f.qs)


class Q5_K(_Scale6Codec, qtype=QType.Q5_K, layout=BlockLayout("block_q5_K", d=2, dmin=2, scales=12, qh=32, qs=128)):
    nmax, rmin, nstep = 31, -0.5, 15

    def pack_levels(self, f: BlockFields, levels: torch.Tensor) -> None:
        # bit 4 of value 32s + j goes to bit s of qh[j]
        high = (levels >> 4).reshape(-1, 8, 32)
        f.qh.copy_((high << torch.arange(8, device=levels.device, dtype=torch.int32)[None, :, None]).sum(dim=1))
        f.qs.copy_(_pack_nibble_pairs(levels & 0xF))

    def unpack_levels(self, f: BlockFields) -> torch.Tensor:
        qh = f.qh.to(torch.int32)
        high = (qh[:, None, :] >> torch.arange(8, device=qh.device, dtype=torch.int32)[None, :, None]) & 1
        return _unpack_nibble_pairs(f.qs) | (high.reshape(-1, QK_K) << 4)


class Q2_K(Codec, qtype=QType.Q2_K, layout=BlockLayout("block_q2_K", scales=16, qs=64, d=2, dmin=2)):
    """16 sub-blocks of 16: 4-bit scale and min each, 2-bit values."""

    chunk_elements = 1 << 19  # a step's passes over x, w and levels stay in a CPU's cache
    supports_imatrix = True

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        nb = x.shape[0]
        xs = _position_first(x, 16)
        if weights is None:
            scales, mins, levels = make_qkx2_quants(xs, "abs", 3, -0.5, 0.1, 15, True)
            scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
            max_scale, max_min = _super_scale(scales), _super_scale(mins)
            has_scale, has_min = max_scale > 0, max_min > 0
            ls = nearest_int(inverse_or_zero(max_scale, 15.0)[:, None] * scales)
            lm = nearest_int(inverse_or_zero(max_min, 15.0)[:, None] * mins)
            ls = torch.where(has_scale[:, None], ls & 0xFF, 0)
            packed = ls | torch.where(has_min[:, None], (lm << 4) & 0xFF, 0)
            d = fp16_round(torch.where(has_scale, div_by(max_scale, 15.0), 0.0))
            dmin = fp16_round(torch.where(has_min, div_by(max_min, 15.0), 0.0))
        else:
            w = importance_weights(x, weights, 1.0)
            scales, mins, levels = make_qkx2_quants(xs, _position_first(w, 16), 3, *QKX3, False)
            sw = sub_block_weights(w, 16)
            d, ls = make_qp_quants(scales.reshape(nb, 16), 15, sw)
            dmin, lm = make_qp_quants(mins.reshape(nb, 16), 15, sw)
            packed = (ls | (lm << 4)) & 0xFF
            d, dmin = fp16_round(d), fp16_round(dmin)
        sub_d = (d[:, None] * (packed & 0xF).to(torch.float32)).reshape(-1)
        sub_dm = (dmin[:, None] * (packed >> 4).to(torch.float32)).reshape(-1)
        levels = _block_major(_requantize(xs, sub_d, sub_dm, levels, 3), nb)
        quads = levels.reshape(nb, 2, 4, 32)  # byte 32h+l holds L[128h + 32k + l] at bits 2k
        qs = (quads << (2 * torch.arange(4, device=x.device, dtype=torch.int32))[None, None, :, None]).sum(dim=2)
        f = self.layout.split(out)
        f.scales.copy_(packed)
        f.qs.copy_(qs.reshape(nb, 64))
        put_fp16(f.d, d[:, None])
        put_fp16(f.dmin, dmin[:, None])

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        nb = blocks.shape[0]
        f = self.layout.split(blocks)
        scales = f.scales.to(torch.int32)
        d, dmin = fp16_from_bytes(f.d), fp16_from_bytes(f.dmin)
        dl = (d * (scales & 0xF).to(torch.float32))[..., None]
        ml = (dmin * (scales >> 4).to(torch.float32))[..., None]
        qs = f.qs.to(torch.int32).reshape(nb, 2, 1, 32)
        q = (qs >> (2 * torch.arange(4, device=blocks.device, dtype=torch.int32))[None, None, :, None]) & 3
        return (dl * q.reshape(nb, 16, 16).to(torch.float32) - ml).reshape(nb, QK_K)


CODECS = (Q5_K(), Q4_K(), Q2_K())
