"""The 32-value block types: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0.

Two scale rules cover the four small ones. *Symmetric* (Q4_0, Q5_0) takes the value of
largest magnitude, keeping its sign, as ``-2^(bits-1)`` steps; *affine* (Q4_1, Q5_1)
spans min..max in ``2^bits - 1`` steps from the min. There is no search, so no order-
sensitive sums: max, min and argmax are exact whatever the order.
"""
from __future__ import annotations

import torch

from .base import Codec, QType, fp16_bytes, fp16_from_bytes, inverse_or_zero, pack_nibbles, signed_absmax

HALF = 16  # elements j and j + 16 share a byte


_JUST_BELOW_HALF = 0.49999997  # 0.5 - 2^-25: the one float32 that "+ 0.5" rounds up to 1


def round_away_int8(x: torch.Tensor) -> torch.Tensor:
    """C's ``roundf`` (halves away from zero) to int8, for |x| <= 127.

    ``trunc(x + copysign(0.5, x))`` is exact for |x| >= 0.5: below the next integer the sum
    keeps x's ulp. Below 0.5 only 0.5 - 2^-25 rounds up (to 1), so it is put back to 0."""
    q = torch.copysign(torch.tensor(0.5, device=x.device), x).add_(x).to(torch.int8)
    return q.masked_fill_(x.abs() == _JUST_BELOW_HALF, 0)


def _symmetric(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q5_0: ``-2^(bits-1)`` steps of the signed value of largest magnitude."""
    d = signed_absmax(x) / -(1 << (bits - 1))
    v = x * inverse_or_zero(d)
    v += (1 << (bits - 1)) + 0.5
    return d, _truncate_to_uint8(v, (1 << bits) - 1)


def _truncate_to_uint8(v: torch.Tensor, top: int) -> torch.Tensor:
    """C's ``MIN(top, (int)v)`` for v in [0, 2*top]: float->int conversion truncates."""
    return v.to(torch.uint8).clamp_(max=top)


def _first_equal(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` with the sign of zero that a C scan keeps (the first of -0 and +0 it meets):
    it reaches the stored min and the scale's sign. Only zero rows need a look."""
    zero = (v == 0).reshape(-1).nonzero().reshape(-1)
    if zero.numel():
        rows = x[zero]
        v = v.clone()
        v[zero] = rows.gather(1, (rows == 0).to(torch.uint8).argmax(dim=1, keepdim=True))
    return v


def _affine(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1/Q5_1: min..max in 2^bits - 1 steps."""
    lo, hi = _first_equal(x, x.amin(dim=1, keepdim=True)), _first_equal(x, x.amax(dim=1, keepdim=True))
    d = (hi - lo) / ((1 << bits) - 1)
    v = x - lo
    v *= inverse_or_zero(d)
    v += 0.5
    return d, lo, _truncate_to_uint8(v, (1 << bits) - 1)


_BIT = 1 << torch.arange(8, dtype=torch.int32)


def _fifth_bits(q: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each of the 32 values as a little-endian uint32 (4 bytes): value j -> bit j."""
    bits = ((q >> 4) & 1).to(torch.int32).reshape(-1, 4, 8)
    return (bits * _BIT.to(q.device)).sum(dim=2).to(torch.uint8)


def _low_nibbles(q: torch.Tensor) -> torch.Tensor:
    return pack_nibbles(q[:, :HALF] & 0xF, q[:, HALF:] & 0xF)


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0xF, qs >> 4], dim=1)


def _unpack_fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    return ((qh[:, :, None].to(torch.int32) >> torch.arange(8, device=qh.device)) & 1).reshape(-1, 32)


class Q8_0(Codec):
    qtype = QType.Q8_0

    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        d = x.abs().amax(dim=1, keepdim=True) / 127
        q = round_away_int8(x * inverse_or_zero(d))
        return torch.cat([fp16_bytes(d), q.view(torch.uint8)], dim=1)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32) * fp16_from_bytes(blocks[:, :2])


class Q4_0(Codec):
    qtype = QType.Q4_0

    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        d, q = _symmetric(x, 4)
        return torch.cat([fp16_bytes(d), _low_nibbles(q)], dim=1)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        q = _unpack_nibbles(blocks[:, 2:]).to(torch.float32) - 8
        return fp16_from_bytes(blocks[:, :2]) * q


class Q5_0(Codec):
    qtype = QType.Q5_0

    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        d, q = _symmetric(x, 5)
        return torch.cat([fp16_bytes(d), _fifth_bits(q), _low_nibbles(q)], dim=1)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        q = _unpack_nibbles(blocks[:, 6:]).to(torch.int32) | (_unpack_fifth_bits(blocks[:, 2:6]) << 4)
        return fp16_from_bytes(blocks[:, :2]) * (q - 16).to(torch.float32)


class Q4_1(Codec):
    qtype = QType.Q4_1

    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        d, lo, q = _affine(x, 4)
        return torch.cat([fp16_bytes(d), fp16_bytes(lo), _low_nibbles(q)], dim=1)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        q = _unpack_nibbles(blocks[:, 4:]).to(torch.float32)
        return fp16_from_bytes(blocks[:, :2]) * q + fp16_from_bytes(blocks[:, 2:4])


class Q5_1(Codec):
    qtype = QType.Q5_1

    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        d, lo, q = _affine(x, 5)
        return torch.cat([fp16_bytes(d), fp16_bytes(lo), _fifth_bits(q), _low_nibbles(q)], dim=1)

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        q = _unpack_nibbles(blocks[:, 8:]).to(torch.int32) | (_unpack_fifth_bits(blocks[:, 4:8]) << 4)
        return fp16_from_bytes(blocks[:, :2]) * q.to(torch.float32) + fp16_from_bytes(blocks[:, 2:4])


CODECS = (Q8_0(), Q5_1(), Q5_0(), Q4_1(), Q4_0())
