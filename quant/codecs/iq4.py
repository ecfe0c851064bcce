"""IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table of 16 levels.

Both run ggml's ``quantize_row_iq4_nl_impl`` as ``ggml_quantize_chunk`` calls it
(``ntry = 7``): per 32-value block a first scale from the value of largest magnitude, then
15 nearby scales, each fitted by weighted least squares (weights x^2, or with an importance
matrix its importance times sqrt(sigma2 + x^2), sigma2 twice the super-block's mean square)
and kept if it explains more of the block. IQ4_NL stores that scale as fp16; IQ4_XS quantizes the
eight block scales of a 256-value super-block to 6 bits against an fp16 super-scale.
"""
from __future__ import annotations

import torch

from . import triton_search
from .base import BlockLayout, Codec, QType, Workspace, div_by, fp16_from_bytes, importance_weights, inverse_or_zero, \
    nearest_int, put_fp16, rdiv, signed_absmax
from .fused import cpu_fused

KVALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
NTRY = 7
GROUP_MAX_EPS = 1e-15


MIDPOINTS = tuple((a + b) / 2 for a, b in zip(KVALUES, KVALUES[1:]))
STEPS = tuple(float(b - a) for a, b in zip(KVALUES, KVALUES[1:]))
# after the first guess -max/values[0]: id = (itry + values[0]) / max for itry = -NTRY..NTRY
TRIES = tuple(float(t + KVALUES[0]) for t in range(-NTRY, NTRY + 1))


def best_index(x: torch.Tensor) -> torch.Tensor:
    """ggml's ``best_index_int8``: the nearest table level, ties to the upper one.

    C compares ``x - lo < hi - x``; that is ``x < (lo + hi)/2`` wherever it can be close:
    near a midpoint |x| >= 4, so both differences of x and the integer levels are exact,
    and where |x| < 4 the two sides differ by more than any rounding. One search over the
    midpoints does it."""
    mids = torch.tensor(MIDPOINTS, dtype=torch.float32, device=x.device)
    return torch.searchsorted(mids, x.contiguous(), right=True)


def block_scales(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The least-squares scale of each 32-value block x: (m, 32), after the ntry search,
    weighted by ``weights`` (m, 32) or x^2."""
    if triton_search.applies(x):
        wt = None if weights is None else weights.T.contiguous()
        return triton_search.iq4_scales(x.T.contiguous(), KVALUES[0], TRIES, MIDPOINTS, STEPS, wt)
    peak = signed_absmax(x)[:, 0]
    zero = x.abs().amax(dim=1) < GROUP_MAX_EPS
    peak = torch.where(zero, 1.0, peak)
    first = rdiv(1.0, div_by(-peak, KVALUES[0]))
    tries = torch.tensor(TRIES, device=x.device)
    inv = torch.cat([first[:, None], tries / peak[:, None]], dim=1)  # (m, 16)
    xt = x.T.contiguous()
    return torch.where(zero, 0.0, _search(xt, xt * xt if weights is None else weights.T.contiguous(), inv))


@cpu_fused
def _search(xt: torch.Tensor, wt: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The fits of the candidate inverse scales ``inv`` (m, T) of position-first blocks
    ``xt`` (32, m) weighted by ``wt`` (32, m), each accepted if it explains more of the
    block: -> d (m,)."""
    sumqx = torch.zeros_like(inv)
    sumq2 = torch.zeros_like(inv)
    for j in range(xt.shape[0]):  # in-order sums, one (m, T) slice at a time
        xj = xt[j, :, None]
        q = nearest_level(inv * xj)
        wq = wt[j, :, None] * q
        sumqx += wq * xj
        sumq2 += wq * q
    d = torch.where(sumq2[:, 0] > 0, sumqx[:, 0] / torch.where(sumq2[:, 0] > 0, sumq2[:, 0], 1.0), 0.0)
    best = d * sumqx[:, 0]
    for t in range(1, inv.shape[1]):
        qx, q2 = sumqx[:, t], sumq2[:, t]
        better = (q2 > 0) & (qx * qx > best * q2)
        d = torch.where(better, qx / torch.where(better, q2, 1.0), d)
        best = torch.where(better, d * qx, best)
    return d


def nearest_level(x: torch.Tensor) -> torch.Tensor:
    """``KVALUES[best_index(x)]`` as a sum: the first level plus a step per midpoint <= x
    (elementwise, so it fuses; integers, so exact)."""
    q = torch.full_like(x, float(KVALUES[0]))
    for mid, step in zip(MIDPOINTS, STEPS):
        q += torch.where(x >= mid, step, 0.0)
    return q


def _pack(levels: torch.Tensor) -> torch.Tensor:
    """(m, 32) indices -> (m, 16) bytes: byte j = L[j] | L[16 + j] << 4."""
    return (levels[:, :16] | (levels[:, 16:] << 4)).to(torch.uint8)


def _unpack(qs: torch.Tensor) -> torch.Tensor:
    q = qs.to(torch.int64)
    return torch.cat([q & 0xF, q >> 4], dim=1)


def _levels(qs: torch.Tensor) -> torch.Tensor:
    return torch.tensor(KVALUES, dtype=torch.float32, device=qs.device)[_unpack(qs)]


class IQ4_NL(Codec, qtype=QType.IQ4_NL, layout=BlockLayout("block_iq4_nl", d=2, qs=16)):
    """32 values on IQ4's non-linear grid, one scale."""

    supports_imatrix = True

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        d = block_scales(x, None if weights is None else importance_weights(x, weights, 2.0))
        levels = best_index(inverse_or_zero(d)[:, None] * x)  # the unrounded scale, as C
        f = self.layout.split(out)
        put_fp16(f.d, d[:, None])
        f.qs.copy_(_pack(levels))

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        f = self.layout.split(blocks)
        return fp16_from_bytes(f.d) * _levels(f.qs)


class IQ4_XS(Codec, qtype=QType.IQ4_XS, layout=BlockLayout("block_iq4_xs", d=2, scales_h=2, scales_l=4, qs=128)):
    """8 sub-blocks of 32 on IQ4's non-linear grid, 6-bit sub-block scales."""

    supports_imatrix = True

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        w = None if weights is None else importance_weights(x, weights, 2.0).reshape(-1, 32)
        nb, sub = x.shape[0], x.reshape(-1, 32)
        scales = block_scales(sub, w).reshape(nb, 8)
        d = -signed_absmax(scales)[:, 0] / 32
        ls = nearest_int(inverse_or_zero(d)[:, None] * scales).clamp_(-32, 31)
        dl = (d[:, None] * ls.to(torch.float32)).reshape(-1)
        levels = best_index(inverse_or_zero(dl)[:, None] * sub)
        ls = ls + 32
        scales_h = ((ls >> 4) << (2 * torch.arange(8, device=x.device, dtype=torch.int32))).sum(dim=1)
        f = self.layout.split(out)
        put_fp16(f.d, d[:, None])
        f.scales_h.copy_(torch.stack([scales_h & 0xFF, scales_h >> 8], dim=1))  # a little-endian uint16
        f.scales_l.copy_((ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4))
        f.qs.copy_(_pack(levels).reshape(nb, 128))

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        nb = blocks.shape[0]
        f = self.layout.split(blocks)
        d = fp16_from_bytes(f.d)
        h = f.scales_h.to(torch.int32)
        scales_h = h[:, 0] | (h[:, 1] << 8)
        scales_l = f.scales_l.to(torch.int32)
        low = torch.stack([scales_l & 0xF, scales_l >> 4], dim=2).reshape(nb, 8)
        high = (scales_h[:, None] >> (2 * torch.arange(8, device=blocks.device))) & 3
        dl = d * ((low | (high << 4)) - 32).to(torch.float32)
        q = _levels(f.qs.reshape(-1, 16)).reshape(nb, 8, 32)
        return (dl[..., None] * q).reshape(nb, 256)


CODECS = (IQ4_NL(), IQ4_XS())
