"""K-quants with one signed scale per 16-value sub-block: Q6_K and Q3_K.

Q6_K finds each sub-block's scale with ggml's ``make_qx_quants`` (a first guess from the
value of largest magnitude, then 18 nearby scales, each fitted by weighted least squares
and kept if it explains more of the block); Q3_K with ``make_q3_quants`` (the same guess,
then up to five in-order passes that move single values to a better level). Sub-block
scales are then quantized against the super-block scale (stored as fp16), and the values
requantized with them.
"""
from __future__ import annotations

import functools

import torch

from . import triton_search
from .base import BlockLayout, Codec, QType, Workspace, fp16_from_bytes, fp16_round, importance_weights, nearest_int, \
    put_fp16, rdiv, seq_sum, signed_absmax, sub_block_weights
from .fused import cpu_fused

QK_K = 256
GROUP_MAX_EPS = 1e-15  # below this a sub-block counts as all zero


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _first_guess(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (m, 16) -> (signed max (m,), all-zero mask (m,), iscale = -nmax/max (m,))."""
    peak = signed_absmax(x)[:, 0]
    zero = peak.abs() < GROUP_MAX_EPS
    return peak, zero, rdiv(-float(nmax), torch.where(zero, 1.0, peak))


@functools.cache  # asked for every chunk
def _qx_numerators(nmax: int) -> tuple[float, ...]:
    """make_qx_quants' candidate scales are these over the signed max: the first guess
    -nmax, then -(nmax + 0.1*is) for is = -9..9 except 0, in float32."""
    return (-float(nmax), *(float(-(_f32(nmax) + _f32(0.1) * _f32(s))) for s in range(-9, 10) if s != 0))


def make_qx_quants(x: torch.Tensor, nmax: int,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, weights)`` over sub-blocks x: (m, n), with
    ``weights`` (m, n) or, as C's NULL, x^2.

    Returns (scale (m,), L (n, m) in 0..2*nmax-1 as floats; 0 for all-zero sub-blocks). The
    candidates do not depend on each other, only their acceptance does (each must beat the
    best so far), so all are evaluated at once and accepted in order."""
    xt = x.T.contiguous()  # position-first: the sums run over contiguous slices
    wt = None if weights is None else weights.T.contiguous()
    if triton_search.applies(xt):
        return triton_search.qx(xt, nmax, _qx_numerators(nmax), wt)
    peak, zero, _ = _first_guess(xt.T, nmax)  # reduced over xt's rows: contiguous, fast
    numerators = torch.tensor(_qx_numerators(nmax), dtype=torch.float32, device=x.device)
    iscale = numerators[:, None] / torch.where(zero, 1.0, peak)  # (S, m): the blocks run along the vector lanes
    scale, chosen = _qx_search(xt, xt * xt if wt is None else wt, iscale, nmax)
    levels = torch.round(chosen * xt).clamp_(-nmax, nmax - 1)  # the accepted candidate's levels
    scale = torch.where(zero, 0.0, scale)
    return scale, torch.where(zero, 0.0, levels + nmax)


@cpu_fused
def _qx_search(xt: torch.Tensor, w: torch.Tensor, iscale: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fits of all candidate scales ``iscale`` (S, m) of sub-blocks ``xt`` (n, m) weighted
    by ``w`` (n, m), and the in-order acceptance: -> (scale (m,), the accepted iscale (m,))."""
    wx = w * xt
    # in-order sums over the positions, one (S, m) slice at a time (cache-sized)
    sumlx = torch.zeros_like(iscale)
    suml2 = torch.zeros_like(iscale)
    for j in range(xt.shape[0]):
        level = torch.round(iscale * xt[j]).clamp_(-nmax, nmax - 1)
        sumlx += wx[j] * level
        level *= w[j] * level
        suml2 += level
    scale = torch.where(suml2[0] != 0, sumlx[0] / torch.where(suml2[0] != 0, suml2[0], 1.0), 0.0)
    best = scale * sumlx[0]
    chosen = iscale[0]
    for s in range(1, iscale.shape[0]):
        lx, l2 = sumlx[s], suml2[s]
        better = (l2 > 0) & (lx * lx > best * l2)
        new_scale = lx / torch.where(better, l2, 1.0)
        scale = torch.where(better, new_scale, scale)
        best = torch.where(better, new_scale * lx, best)
        chosen = torch.where(better, iscale[s], chosen)
    return scale, chosen


def make_q3_quants(x: torch.Tensor, nmax: int, work: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` over sub-blocks x: (m, n).

    Returns (scale (m,), L (n, m) in 0..2*nmax-1 as floats; 0 for all-zero sub-blocks). Up to
    five in-order passes move single values to a better level; C leaves a sub-block once a
    pass changes nothing in it. After the first pass only the sub-blocks it changed (about
    a fifth) are gathered, once; passing again over one that has settled changes nothing
    (a pass is a function of the state it starts from), so they all go on together until
    a pass changes none."""
    if triton_search.applies(x):
        return triton_search.q3(x.T.contiguous(), nmax)
    xt = work.take("positions", x.T.shape, x.dtype, x.device).copy_(x.T)  # position-first: in-order sums
    _, zero, iscale = _first_guess(xt.T, nmax)  # reduced over xt's rows: contiguous, fast
    levels, sumlx, suml2, changed = _q3_first_pass(xt, iscale, nmax)
    active = changed.nonzero().reshape(-1)
    if active.numel():
        xa, la, lx, l2 = x[active].T.contiguous(), levels[:, active], sumlx[active], suml2[active]
        for _ in range(4):
            la, lx, l2, changed = _q3_pass(xa, la, lx, l2, nmax)
            if not changed.any():
                break
        levels[:, active], sumlx[active], suml2[active] = la, lx, l2
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    scale = torch.where(zero, 0.0, scale)
    return scale, torch.where(zero, 0.0, levels + nmax)


@cpu_fused  # every chunk has one shape, and a static kernel builds faster (Q3_K: 98 s, not 125 s, here)
def _q3_first_pass(xt: torch.Tensor, iscale: torch.Tensor, nmax: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first pass of ``make_q3_quants``' refinement over sub-blocks ``xt`` (n, m): the
    levels of the first guess's ``iscale`` (m,) and their sums, then ``_q3_moves``."""
    w = xt * xt
    wx = w * xt
    levels = torch.round(iscale * xt).clamp_(-nmax, nmax - 1)
    return _q3_moves(xt, w, wx, levels, seq_sum(wx * levels), seq_sum(w * levels * levels), nmax)


@cpu_fused(dynamic=True)  # later passes see only the sub-blocks still changing
def _q3_pass(xt: torch.Tensor, levels: torch.Tensor, lx: torch.Tensor, l2: torch.Tensor,
             nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A later pass of ``make_q3_quants``' refinement: ``_q3_moves`` from the state the last left."""
    w = xt * xt
    return _q3_moves(xt, w, w * xt, levels, lx, l2, nmax)


def _q3_moves(xt: torch.Tensor, w: torch.Tensor, wx: torch.Tensor, levels: torch.Tensor, lx: torch.Tensor,
              l2: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over sub-blocks ``xt`` (n, m) with weights ``w`` = x^2 and ``wx`` = w*x:
    position by position, move a value to the level that best fits the rest of its
    sub-block, if that raises the part explained. -> (levels, lx, l2, changed (m,))."""
    changed = torch.zeros_like(lx, dtype=torch.bool)
    rows = []
    for i in range(xt.shape[0]):
        l_i = levels[i]
        slx = lx - wx[i] * l_i
        sl2 = l2 - w[i] * l_i * l_i
        new_l = torch.round(xt[i] * sl2 / slx).clamp_(-nmax, nmax - 1)  # slx <= 0: masked below
        accept = (slx > 0) & (new_l != l_i)
        slx = slx + wx[i] * new_l
        sl2 = sl2 + w[i] * new_l * new_l
        accept &= (sl2 > 0) & (slx * slx * l2 > lx * lx * sl2)
        rows.append(torch.where(accept, new_l, l_i))
        lx = torch.where(accept, slx, lx)
        l2 = torch.where(accept, sl2, l2)
        changed |= accept
    return torch.stack(rows), lx, l2, changed


def _q3_k_weighted_scales(x: torch.Tensor, qw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q3_K with importance ``qw`` (nb, 256): each sub-block's scale by ``make_qx_quants`` with
    weights qw*sqrt(sigma2 + x^2), then the 16 scales themselves by ``make_qx_quants`` (32
    levels) weighted by their sub-blocks' total weight. -> (6-bit scales + 32 (nb, 16) int,
    fp16-rounded super-block scale (nb,), sub-block levels (16, nb*16))."""
    nb = x.shape[0]
    weight = importance_weights(x, qw, 2.0)
    sub_w = weight.reshape(-1, 16)
    scales, levels = make_qx_quants(x.reshape(-1, 16), 4, sub_w)
    sw = sub_block_weights(weight, 16)
    d, ls = make_qx_quants(scales.reshape(nb, 16), 32, sw)
    return ls.T.to(torch.int32), fp16_round(d), levels


def _requantize(x: torch.Tensor, d: torch.Tensor, levels: torch.Tensor, nmax: int) -> torch.Tensor:
    """Values against the stored sub-block scales d (m,); where d is 0 the search's levels stay.
    x: (m, 16) block-major; levels: (16, m) -> uint8 (m, 16) in 0..2*nmax-1."""
    keep = d == 0
    fresh = torch.round(x / torch.where(keep, 1.0, d)[:, None]).clamp_(-nmax, nmax - 1).add_(nmax).to(torch.uint8)
    rows = keep.nonzero().reshape(-1)  # rare: read the transposed levels only there
    if rows.numel():
        fresh[rows] = levels[:, rows].T.to(torch.uint8)
    return fresh


def _pack_interleaved_bits(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """(nb, 256) uint8 levels < 2^bits -> (nb, 256*bits/8), 8/bits levels a byte, those 32 apart
    sharing one: byte 32h + l holds L[128h + 32k + l] at bits k*bits (the ``j += 128`` packing
    of Q3_K's and Q6_K's low/high bits; with bits=1, Q3_K's high-bit mask)."""
    per_byte = 8 // bits
    groups = levels.reshape(levels.shape[0], -1, per_byte, 32)
    packed = groups[:, :, 0].clone()
    for k in range(1, per_byte):
        packed |= groups[:, :, k] << (bits * k)
    return packed.reshape(levels.shape[0], -1)


def _unpack_interleaved_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of ``_pack_interleaved_bits``: -> (nb, 256) int32 levels."""
    per_byte = 8 // bits
    q = packed.to(torch.int32).reshape(packed.shape[0], -1, 1, 32)
    shifts = (bits * torch.arange(per_byte, device=packed.device, dtype=torch.int32))[None, None, :, None]
    return ((q >> shifts) & ((1 << bits) - 1)).reshape(packed.shape[0], -1)


class Q6_K(Codec, qtype=QType.Q6_K, layout=BlockLayout("block_q6_K", ql=128, qh=64, scales=16, d=2)):
    """16 sub-blocks of 16, int8 scales, 6-bit values (4 low bits + 2 high bits)."""

    supports_imatrix = True  # ggml weights the sub-block search by the importance alone

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        nb = x.shape[0]
        sub = x.reshape(-1, 16)
        scales, levels = make_qx_quants(sub, 32, None if weights is None else weights.reshape(-1, 16))
        scales = scales.reshape(nb, 16)
        max_scale = signed_absmax(scales)[:, 0]
        empty = max_scale.abs() < GROUP_MAX_EPS
        iscale = rdiv(-128.0, torch.where(empty, 1.0, max_scale))
        d = fp16_round(rdiv(1.0, iscale))
        sc = nearest_int(iscale[:, None] * scales).clamp_(max=127)
        sub_d = (d[:, None] * sc.to(torch.float32)).reshape(-1)
        levels = _requantize(sub, sub_d, levels, 32).reshape(nb, QK_K)
        low = levels & 0xF
        halves = low.reshape(nb, 2, 2, 64)  # ql[64h + l] = L[128h + l] | L[128h + 64 + l] << 4
        f = self.layout.split(out)
        f.ql.copy_((halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(nb, 128))
        f.qh.copy_(_pack_interleaved_bits(levels >> 4, 2))
        f.scales.view(torch.int8).copy_(sc)
        put_fp16(f.d, d[:, None])
        out.masked_fill_(empty[:, None], 0)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        nb = blocks.shape[0]
        f = self.layout.split(blocks)
        ql = f.ql.to(torch.int32).reshape(nb, 2, 1, 64)
        low = torch.cat([ql & 0xF, ql >> 4], dim=2).reshape(nb, QK_K)
        q = (low | (_unpack_interleaved_bits(f.qh, 2) << 4)) - 32
        sc = f.scales.contiguous().view(torch.int8).to(torch.float32)
        dl = (fp16_from_bytes(f.d) * sc)[..., None]
        return (dl * q.reshape(nb, 16, 16).to(torch.float32)).reshape(nb, QK_K)


class Q3_K(Codec, qtype=QType.Q3_K, layout=BlockLayout("block_q3_K", hmask=32, qs=64, scales=12, d=2)):
    """16 sub-blocks of 16, 6-bit scales, 3-bit values (2 low bits + a high-bit mask)."""

    supports_imatrix = True

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        nb = x.shape[0]
        sub = x.reshape(-1, 16)
        if weights is None:
            scales, levels = make_q3_quants(sub, 4, work)
            scales = scales.reshape(nb, 16)
            max_scale = signed_absmax(scales)[:, 0]
            has = max_scale != 0
            iscale = rdiv(-32.0, torch.where(has, max_scale, 1.0))
            l6 = torch.where(has[:, None], nearest_int(iscale[:, None] * scales).clamp_(-32, 31) + 32, 0)
            d = fp16_round(torch.where(has, rdiv(1.0, iscale), 0.0))
        else:
            l6, d, levels = _q3_k_weighted_scales(x, weights)
            has = torch.ones_like(d, dtype=torch.bool)  # the weighted path stores its 6-bit scales as found
        packed = torch.cat([(l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4),
                            sum((l6[:, 4 * q:4 * q + 4] >> 4) << (2 * q) for q in range(4))], dim=1)
        packed = torch.where(has[:, None], packed, 0)
        sub_d = (d[:, None] * (l6 - 32).to(torch.float32)).reshape(-1)
        levels = _requantize(sub, sub_d, levels, 4).reshape(nb, QK_K)
        f = self.layout.split(out)
        f.hmask.copy_(_pack_interleaved_bits(levels >> 2, 1))  # bit k of byte j: L[32k + j] > 3
        f.qs.copy_(_pack_interleaved_bits(levels & 3, 2))
        f.scales.copy_(packed)
        put_fp16(f.d, d[:, None])

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        nb = blocks.shape[0]
        f = self.layout.split(blocks)
        hmask = f.hmask.to(torch.int32)
        low = _unpack_interleaved_bits(f.qs, 2)
        s = f.scales.to(torch.int32)
        lo4 = torch.cat([s[:, :8] & 0xF, s[:, :8] >> 4], dim=1)
        hi2 = (s[:, 8:12][:, None, :] >> (2 * torch.arange(4, device=blocks.device))[None, :, None]) & 3
        sc = (lo4 | (hi2.reshape(nb, 16) << 4)) - 32
        dl = (fp16_from_bytes(f.d) * sc.to(torch.float32))[..., None]
        high = (hmask[:, None, :] >> torch.arange(8, device=blocks.device)[None, :, None]) & 1
        q = low - ((high.reshape(nb, QK_K) ^ 1) << 2)
        return (dl * q.reshape(nb, 16, 16).to(torch.float32)).reshape(nb, QK_K)


CODECS = (Q6_K(), Q3_K())
