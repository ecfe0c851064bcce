"""The 32-value block types: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0.

Two scale rules cover the four small ones. *Symmetric* (Q4_0, Q5_0) takes the value of
largest magnitude, keeping its sign, as ``-2^(bits-1)`` steps; *affine* (Q4_1, Q5_1)
spans min..max in ``2^bits - 1`` steps from the min. There is no search, so no order-
sensitive sums: max, min and argmax are exact whatever the order. With an importance
matrix ggml searches instead, as the K-quants do, weighting each value by its importance
times sqrt(the row's mean square + its own square).
"""
from __future__ import annotations

import torch

from .base import (BlockFields, BlockLayout, Codec, QType, Workspace, div_by, fp16_from_bytes, inverse_or_zero,
                   put_fp16, signed_absmax)
from .fused import cpu_fused
from .kquants_affine import QKX3, make_qkx2_quants
from .kquants_symmetric import make_qx_quants

NIBBLE_PAIR_STRIDE = 16  # byte j holds value j (low nibble) and value j + 16 (high nibble)


_JUST_BELOW_HALF = 0.49999997  # 0.5 - 2^-25: the one float32 that "+ 0.5" rounds up to 1


def put_round_away_int8(out: torch.Tensor, x: torch.Tensor, work: Workspace) -> None:
    """C's ``roundf`` (halves away from zero) of x, |x| <= 127, into the int8 tensor ``out``.

    ``trunc(x + copysign(0.5, x))`` is exact for |x| >= 0.5: below the next integer the sum
    keeps x's ulp. Below 0.5 only 0.5 - 2^-25 rounds up (to 1), so it is put back to 0."""
    v = work.take("halves", x.shape, x.dtype, x.device)
    torch.copysign(torch.tensor(0.5, device=x.device), x, out=v)
    v += x
    out.copy_(v)  # float->int conversion truncates
    torch.abs(x, out=v)
    out.masked_fill_(v == _JUST_BELOW_HALF, 0)


@cpu_fused
def _packed_levels(x: torch.Tensor, offset: torch.Tensor | None, scale: torch.Tensor, shift: float, top: int,
                   fifth: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """C's ``MIN(top, (int)((x - offset)*scale + shift))`` for the values of blocks x (n, 32),
    packed: -> (n, 16) bytes ``L[j] | L[j + 16] << 4`` (low four bits of each), and where
    ``fifth``, bit 4 of each value as ggml's little-endian uint32 (value j -> bit j), (n, 4).
    Worked position-first, (32, n), so every step runs along the blocks."""
    xt = x.T
    v = xt * scale.T if offset is None else (xt - offset.T) * scale.T
    q = (v + shift).to(torch.uint8).clamp_(max=top)  # float->int conversion truncates, as C's cast
    return _pack(q, fifth)


def _pack(q: torch.Tensor, fifth: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position-first uint8 levels (32, n) -> (n, 16) bytes ``L[j] | L[j + 16] << 4`` (low four
    bits of each) and, where ``fifth``, bit 4 of each as a little-endian uint32 (value j -> bit j)."""
    nibbles = (q[:NIBBLE_PAIR_STRIDE] & 0xF) | (q[NIBBLE_PAIR_STRIDE:] << 4)  # uint8: bit 4 of the high ones falls off
    if not fifth:
        return nibbles.T.contiguous(), None
    bits = q >> 4  # 0 or 1: q < 32
    qh = torch.stack([sum(bits[8 * b + k] << k for k in range(8)) for b in range(4)])
    return nibbles.T.contiguous(), qh.T.contiguous()


def _symmetric(x: torch.Tensor, bits: int, weights: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Q4_0/Q5_0: ``-2^(bits-1)`` steps of the signed value of largest magnitude; with importance
    ``weights``, ggml's weighted search (``make_qx_quants``) for the step."""
    if weights is not None:
        d, levels = make_qx_quants(x, 1 << (bits - 1), weights)
        return d[:, None], *_pack(levels.to(torch.uint8), bits == 5)
    d = signed_absmax(x) / -(1 << (bits - 1))
    return d, *_packed_levels(x, None, inverse_or_zero(d), (1 << (bits - 1)) + 0.5, (1 << bits) - 1, bits == 5)


def _first_equal(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` with the sign of zero that a C scan keeps (the first of -0 and +0 it meets):
    it reaches the stored min and the scale's sign. Only zero rows need a look."""
    zero = (v == 0).reshape(-1).nonzero().reshape(-1)
    if zero.numel():
        rows = x[zero]
        v = v.clone()
        v[zero] = rows.gather(1, (rows == 0).to(torch.uint8).argmax(dim=1, keepdim=True))
    return v


def _affine(x: torch.Tensor, bits: int, weights: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Q4_1/Q5_1: min..max in 2^bits - 1 steps; with importance ``weights``, ggml's weighted
    search for a (scale, min) (``make_qkx3_quants``)."""
    if weights is not None:
        d, the_min, levels = make_qkx2_quants(x.T.contiguous(), weights.T.contiguous(), (1 << bits) - 1, *QKX3, False)
        return d[:, None], -the_min[:, None], *_pack(levels.to(torch.uint8), bits == 5)
    lo, hi = _first_equal(x, x.amin(dim=1, keepdim=True)), _first_equal(x, x.amax(dim=1, keepdim=True))
    d = div_by(hi - lo, (1 << bits) - 1)
    return d, lo, *_packed_levels(x, lo, inverse_or_zero(d), 0.5, (1 << bits) - 1, bits == 5)


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0xF, qs >> 4], dim=1)


def _unpack_fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    return ((qh[:, :, None].to(torch.int32) >> torch.arange(8, device=qh.device)) & 1).reshape(-1, 32)


class _LegacyCodec(Codec):
    """Writes straight into the output's columns: these types are a few passes over
    memory, so the copies a ``torch.cat`` makes would be a large part of the work."""

    chunk_elements = 1 << 22  # few passes per value: large chunks amortise torch's per-op cost
    imatrix_chunk_elements = 1 << 19  # a search's passes over x and w stay in a CPU's cache: 2x faster


class Q8_0(_LegacyCodec, qtype=QType.Q8_0, layout=BlockLayout("block_q8_0", d=2, qs=32)):
    ignores_imatrix = True

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        # max |x| from two reductions (no |x| tensor); "+ 0" makes an all-zero block's -0 a +0
        d = div_by(torch.maximum(x.amax(dim=1, keepdim=True), -x.amin(dim=1, keepdim=True)) + 0.0, 127)
        f = self.layout.split(out)
        put_fp16(f.d, d)
        v = work.take("values", x.shape, x.dtype, x.device)
        torch.mul(x, inverse_or_zero(d), out=v)
        put_round_away_int8(f.qs.view(torch.int8), v, work)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        f = self.layout.split(blocks)
        return f.qs.contiguous().view(torch.int8).to(torch.float32) * fp16_from_bytes(f.d)


def _put_levels(f: BlockFields, nibbles: torch.Tensor, fifth: torch.Tensor | None) -> None:
    f.qs.copy_(nibbles)
    if fifth is not None:
        f.qh.copy_(fifth)


def _levels(f: BlockFields) -> torch.Tensor:
    """The unsigned levels (n, 32) of 4-bit blocks, or of 5-bit ones (their ``qh`` holds bit 4)."""
    q = _unpack_nibbles(f.qs).to(torch.int32)
    return q if not hasattr(f, "qh") else q | (_unpack_fifth_bits(f.qh) << 4)


class _NibbleCodec(_LegacyCodec):
    """``bits`` = 4 or 5 bits a value, two values a byte (bit 4 in ``qh``). With importance
    weights ggml searches for the scale, weighing each value by the row's mean square too."""

    bits: int
    supports_imatrix = True
    imatrix_row_sigma = True


class _SymmetricCodec(_NibbleCodec):
    """Q4_0, Q5_0: levels stored biased by ``2^(bits-1)``, times one scale."""

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        d, nibbles, fifth = _symmetric(x, self.bits, weights)
        f = self.layout.split(out)
        put_fp16(f.d, d)
        _put_levels(f, nibbles, fifth)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        f = self.layout.split(blocks)
        return fp16_from_bytes(f.d) * (_levels(f) - (1 << (self.bits - 1))).to(torch.float32)


class _AffineCodec(_NibbleCodec):
    """Q4_1, Q5_1: levels times a scale, plus the block's min."""

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        d, lo, nibbles, fifth = _affine(x, self.bits, weights)
        f = self.layout.split(out)
        put_fp16(f.d, d)
        put_fp16(f.m, lo)
        _put_levels(f, nibbles, fifth)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        f = self.layout.split(blocks)
        return fp16_from_bytes(f.d) * _levels(f).to(torch.float32) + fp16_from_bytes(f.m)


class Q4_0(_SymmetricCodec, qtype=QType.Q4_0, layout=BlockLayout("block_q4_0", d=2, qs=16)):
    bits = 4


class Q5_0(_SymmetricCodec, qtype=QType.Q5_0, layout=BlockLayout("block_q5_0", d=2, qh=4, qs=16)):
    bits = 5


class Q4_1(_AffineCodec, qtype=QType.Q4_1, layout=BlockLayout("block_q4_1", d=2, m=2, qs=16)):
    bits = 4


class Q5_1(_AffineCodec, qtype=QType.Q5_1, layout=BlockLayout("block_q5_1", d=2, m=2, qh=4, qs=16)):
    bits = 5


CODECS = (Q8_0(), Q5_1(), Q5_0(), Q4_1(), Q4_0())
