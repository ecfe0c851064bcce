"""What every codec shares: the gguf-py type table and ggml's float32 idioms in torch.

A codec works on blocks: ``quantize_blocks`` takes float32 ``(n, block_size)`` and returns
uint8 ``(n, type_size)`` laid out exactly as ggml writes one block (its fields named by a
``BlockLayout``); ``dequantize_blocks`` is its inverse. Vectorised across blocks; within a
block, sums run left to right in float32 as ggml's C loops do, because a tree-ordered sum
changes the last bit and so, through rounding, the bytes.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np
import torch

QType = gguf.GGMLQuantizationType
# What ``BlockLayout.split`` returns: a named tuple of views, its type made per layout (so untyped here).
BlockFields = Any


class Workspace:
    """Scratch tensors kept from one chunk to the next. A fresh multi-megabyte tensor costs
    the kernel zeroing its pages, about as much as a pass of arithmetic over it."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape``, the same memory each time ``name`` is asked for."""
        numel = 1
        for s in shape:
            numel *= s
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


@dataclass(frozen=True, init=False)
class BlockLayout:
    """A ggml block struct (ggml-common.h) as its fields' byte widths, in the struct's order:
    ``BlockLayout("block_q4_0", d=2, qs=16)``. ``split`` cuts blocks into named views, so
    codecs read and write fields by name, never by byte offset."""

    struct: str
    fields: tuple[tuple[str, int], ...]
    _views: type = field(repr=False, compare=False)

    def __init__(self, struct: str, /, **widths: int) -> None:  # keyword order is the struct's order
        object.__setattr__(self, "struct", struct)
        object.__setattr__(self, "fields", tuple(widths.items()))
        object.__setattr__(self, "_views", namedtuple("BlockFields", widths))

    @property
    def size(self) -> int:
        return sum(width for _, width in self.fields)

    def split(self, blocks: torch.Tensor) -> BlockFields:
        """uint8 blocks ``(n, size)`` -> a named tuple of views ``(n, width)``, one per field:
        writing into a view writes into ``blocks``."""
        return self._views(*torch.split(blocks, [width for _, width in self.fields], dim=1))


class Codec:
    """One GGUF tensor type. A subclass names it in its class statement, a block type with its
    block's layout (``class Q4_0(Codec, qtype=QType.Q4_0, layout=BlockLayout(...))``, as
    gguf-py's quants do), and implements the two block maps."""

    qtype: QType
    layout: BlockLayout | None = None  # None for the one-value float types
    # True where ggml has a separate importance-weighted path (quantize_*_impl); the codec is
    # then given the importance of each value (``weights``, (n, block_size)).
    supports_imatrix: bool = False
    # ggml weighs these types' importance by sqrt(sigma2 + x^2), sigma2 the mean square of the
    # whole row, which one chunk of blocks cannot see: ``quantize`` passes those products.
    imatrix_row_sigma: bool = False
    # ggml takes an importance vector for these types and does not use it (Q8_0, F16, BF16).
    ignores_imatrix: bool = False
    # Values per quantize_blocks call; None: the registry's default, sized for the search types.
    chunk_elements: int | None = None
    # The same with an importance matrix, where that path searches and the plain one does not.
    imatrix_chunk_elements: int | None = None

    def __init_subclass__(cls, qtype: QType | None = None, layout: BlockLayout | None = None,
                          **kwargs: object) -> None:
        """A type's codec must implement one of the two quantize methods (each defaults to the
        other), and a block type's layout must fill ggml's block exactly. Without ``qtype`` the
        class is a base shared by several types."""
        super().__init_subclass__(**kwargs)
        if qtype is None:
            return
        cls.qtype, cls.layout = qtype, layout
        if cls.quantize_blocks is Codec.quantize_blocks and cls.quantize_blocks_into is Codec.quantize_blocks_into:
            raise TypeError(f"{cls.__name__} implements neither quantize_blocks nor quantize_blocks_into")
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if block_size == 1:  # F32, F16, BF16: one value, no block struct
            return
        if layout is None:
            raise TypeError(f"{cls.__name__}: a {qtype.name} codec declares its block's layout")
        if layout.size != type_size:
            raise TypeError(f"{cls.__name__}: its layout {layout.struct} takes {layout.size} bytes, "
                            f"a {qtype.name} block {type_size}")

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def block_size(self) -> int:
        return gguf.GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return gguf.GGML_QUANT_SIZES[self.qtype][1]

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    # A codec implements one of the two: each has the other as its default.
    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.type_size, dtype=torch.uint8, device=x.device)
        self.quantize_blocks_into(x, out, weights, Workspace())
        return out

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        """``quantize_blocks`` written into ``out`` (uint8 ``(n, type_size)``, contiguous);
        ``work`` lends scratch space across calls (``weights``: as for ``quantize_blocks``)."""
        out.copy_(self.quantize_blocks(x, weights))

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int: float32 round-half-to-even (the 1.5*2^23 trick), as int32."""
    return torch.round(x).to(torch.int32)


def rdiv(numerator: float, t: torch.Tensor) -> torch.Tensor:
    """``numerator / t`` correctly rounded. torch evaluates ``scalar / tensor`` as
    ``scalar * reciprocal(tensor)``, one rounding too many: off by an ulp for a quarter of
    the values, which C's ``15.f / x`` never is."""
    return torch.tensor(numerator, dtype=t.dtype, device=t.device) / t


def div_by(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """``t / divisor`` correctly rounded, as C divides by a constant. On a GPU torch divides
    by a Python number as a product with its reciprocal, one rounding too many."""
    return t / torch.tensor(divisor, dtype=t.dtype, device=t.device)


def inverse_or_zero(d: torch.Tensor, numerator: float = 1.0) -> torch.Tensor:
    """C's ``d ? numerator/d : 0`` (also for ``d > 0 ? ... : 0`` where d >= 0)."""
    return torch.where(d != 0, rdiv(numerator, torch.where(d != 0, d, 1.0)), 0.0)


def sqrt_f32(x: torch.Tensor) -> torch.Tensor:
    """C's ``sqrtf``: the correctly rounded float32 square root of x >= 0.

    torch's float32 sqrt is off by an ulp for ~17 % of inputs on a CPU (a vector-library
    approximation). numpy's is the hardware's IEEE root, correct and one pass: it serves on a
    CPU. Elsewhere the float64 root, rounded to float32 (``_float64_sqrt``)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sqrt(x.numpy()))
    return _float64_sqrt(x)


def _float64_sqrt(x: torch.Tensor) -> torch.Tensor:
    """The float32 root through float64, correctly rounded: the second rounding never meets a
    tie. Scaled by a power of 4, a float32 midpoint is an odd integer b in [2^24, 2^25), and
    any float32 x near b^2 (>= 2^48) a multiple of 2^24: x - b^2 is a nonzero integer, so
    sqrt(x) is at least 2^-51 (relative) from b, further than a float64 root within an ulp
    (2^-52) can err."""
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """Per row, the first value of largest magnitude with its sign (+0 for an all-zero row),
    as a C scan ``if (amax < fabsf(v))`` finds it. From amin/amax, which are fast; only rows
    where +m and -m both occur need the index of the first one."""
    hi, lo = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    out = torch.where(hi >= -lo, hi, lo)
    tied = ((hi == -lo) & (hi != 0)).reshape(-1).nonzero().reshape(-1)
    if tied.numel():
        rows = x[tied]
        out[tied] = rows.gather(1, rows.abs().argmax(dim=1, keepdim=True))
    return torch.where(out == 0, 0.0, out)  # -0 would flip the sign of d


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """Round float32 through fp16 and back, as ggml does when it stores a scale."""
    return x.to(torch.float16).to(torch.float32)


def seq_sum(x: torch.Tensor, from_zero: bool = True) -> torch.Tensor:
    """Sum over the *first* dimension in order, in float32, like a C ``for`` loop.

    The first dimension is the position in the block, so each step adds one contiguous
    slice across all blocks. ``from_zero``: the C sum starts at 0 (so -0 becomes +0),
    else at the first term."""
    acc = x[0] + 0.0 if from_zero else x[0].clone()
    for j in range(1, x.shape[0]):
        acc += x[j]
    return acc


def value_weights(qw: torch.Tensor, sigma2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight ggml's importance paths give each value x: its column's importance qw times
    sqrtf(sigma2 + x*x), sigma2 a mean square around it (broadcast to x's shape)."""
    return qw * sqrt_f32(sigma2 + x * x)


def importance_weights(x: torch.Tensor, qw: torch.Tensor, factor: float) -> torch.Tensor:
    """``value_weights`` with sigma2 = factor * sum(x*x) / n over each super-block x (blocks, n),
    the sum in order from 0 in float32 (the K-quants and IQ4)."""
    xt = x.T
    sigma2 = div_by(factor * seq_sum(xt * xt), x.shape[1])
    return value_weights(qw, sigma2[:, None], x)


def sub_block_weights(weights: torch.Tensor, sub: int) -> torch.Tensor:
    """Each sub-block's total weight, summed in order from 0: (nb, n) -> (nb, n/sub)."""
    return seq_sum(weights.reshape(-1, sub).T).reshape(weights.shape[0], -1)


def put_fp16(out: torch.Tensor, v: torch.Tensor) -> None:
    """float32 ``(n, 1)`` stored as fp16 into a 2-byte column of the uint8 ``out``, in place."""
    out.view(torch.float16).copy_(v)


def fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 2k)`` -> float32 ``(n, k)``."""
    return b.contiguous().view(torch.float16).to(torch.float32)
