"""Native GGUF codecs in torch, byte-identical to ggml's ``ggml_quantize_chunk``.

``quantize(rows, "Q4_K")`` -> uint8 ``(rows, row_bytes)``; ``dequantize(raw, "Q4_K", shape)``
-> float32. Rows are split into ggml blocks, and the blocks are processed in chunks so the
search-based types (K-quants, IQ4) stay within a bounded working set on any tensor size.
"""
from __future__ import annotations

import numpy as np
import torch

from . import floats, fused, iq4, kquants_affine, kquants_symmetric, legacy, triton_search
from .base import Codec, QType, Workspace, div_by, seq_sum, value_weights

CODECS: dict[QType, Codec] = {
    c.qtype: c
    for family in (floats, legacy, kquants_affine, kquants_symmetric, iq4)
    for c in family.CODECS
}
# Most precise first; the order users see in lists.
TYPE_NAMES: tuple[str, ...] = tuple(
    t.name for t in sorted(CODECS, key=lambda t: (-CODECS[t].bits_per_weight, t.name))
)
QUANTIZED_TYPE_NAMES: tuple[str, ...] = tuple(
    n for n in TYPE_NAMES if n not in ("F32", "F16", "BF16")
)
# Blocks handled per step: large enough to amortise torch's per-op overhead, small enough
# that a search over ~20 candidate scales stays at a few hundred MB.
CHUNK_ELEMENTS = 1 << 20
# On a GPU each chunk is this many times larger: a few hundred MB of working space at most.
GPU_CHUNK_FACTOR = 16


def parse_type_list(text: str) -> list[str]:
    """Type names as users type them ("q4_k, Q8_0; Q5_K"), checked and in order, each once."""
    types = [t.strip().upper() for t in text.replace(";", ",").split(",") if t.strip()]
    if unknown := [t for t in types if t not in TYPE_NAMES]:
        raise ValueError(f"unknown type(s) {unknown}; known: {', '.join(TYPE_NAMES)}")
    if not types:
        raise ValueError("no types given")
    return list(dict.fromkeys(types))


def get_codec(qtype: str | QType) -> Codec:
    """The codec for a type name ("Q4_K") or a ``GGMLQuantizationType``."""
    if isinstance(qtype, str):
        try:
            qtype = QType[qtype.upper()]
        except KeyError:
            raise ValueError(f"unknown GGUF type {qtype!r}; known: {', '.join(TYPE_NAMES)}") from None
    try:
        return CODECS[qtype]
    except KeyError:
        raise ValueError(f"GGUF type {qtype.name} is not supported; supported: {', '.join(TYPE_NAMES)}") from None


def bits_per_weight(qtype: str | QType) -> float:
    return get_codec(qtype).bits_per_weight


def row_bytes(qtype: str | QType, row_length: int) -> int:
    """Bytes one row of ``row_length`` values takes (raises if it is not a whole number of blocks)."""
    codec = get_codec(qtype)
    if row_length % codec.block_size:
        raise ValueError(f"{codec.name} needs rows of a multiple of {codec.block_size} values, got {row_length}")
    return row_length // codec.block_size * codec.type_size


def quantize(x: torch.Tensor, qtype: str | QType, imatrix: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize float rows (last dim) to ggml blocks; returns uint8 ``(*x.shape[:-1], row_bytes)``.

    ``imatrix``: optional per-column importance (length ``x.shape[-1]``), as llama.cpp's
    imatrix gives; passed to the codecs that have an importance-weighted path.
    ``out``: a contiguous uint8 tensor of that shape (on x's device) to write into; reusing
    one spares the fresh pages a new result costs, which for the cheap types is most of the work.
    """
    codec = get_codec(qtype)
    n = x.shape[-1]
    nbytes = row_bytes(codec.qtype, n)
    shape = (*x.shape[:-1], nbytes)
    if out is None:
        out = torch.empty(shape, dtype=torch.uint8, device=x.device)
    elif out.shape != shape or out.dtype != torch.uint8 or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous uint8 tensor of shape {shape} on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    rows = x.reshape(-1, n)
    out_rows = out.view(-1, nbytes)
    blocks_per_row = n // codec.block_size
    weights = _importance(codec, imatrix, n, x.device)
    row_sigma2 = _row_sigma2(rows) if weights is not None and codec.imatrix_row_sigma else None
    limit = (weights is not None and codec.imatrix_chunk_elements) or codec.chunk_elements or CHUNK_ELEMENTS
    if x.is_cuda:  # chunks sized for a CPU's cache leave a GPU waiting on kernel launches
        limit *= GPU_CHUNK_FACTOR
    chunk = max(1, limit // codec.block_size)  # blocks per chunk, across row ends
    blocks = rows.reshape(-1, codec.block_size)
    out_blocks = out_rows.view(-1, codec.type_size)
    padded = fused.compiles(x, rows.numel())  # compiled steps are built for one shape: every chunk has it
    work = Workspace()
    with fused.quantizing(rows.numel()):
        for start in range(0, blocks.shape[0], chunk):
            part = blocks[start : start + chunk]
            w = None
            if weights is not None:
                index = torch.arange(start, start + part.shape[0], device=x.device)
                w = weights[index % blocks_per_row]
                if row_sigma2 is not None:  # sigma2: the whole row's, which one chunk cannot see
                    w = value_weights(w, row_sigma2[index // blocks_per_row, None], part.to(torch.float32))
            if padded and part.shape[0] < chunk:
                _quantize_padded(codec, part, out_blocks[start:], w, chunk, work)
            else:  # float32 one chunk at a time: a bf16 weight is never held twice over
                codec.quantize_blocks_into(part.to(torch.float32), out_blocks[start : start + chunk], w, work)
    return out


def _importance(codec: Codec, imatrix: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """The importance of each column, per block position: (blocks per row, block size)."""
    if imatrix is None or codec.ignores_imatrix:
        return None
    if not codec.supports_imatrix:
        raise NotImplementedError(f"{codec.name}: quantizing with an importance matrix is not implemented")
    if imatrix.shape != (n,):
        raise ValueError(f"imatrix must have shape ({n},), got {tuple(imatrix.shape)}")
    return imatrix.to(device=device, dtype=torch.float32).reshape(n // codec.block_size, codec.block_size)


def _row_sigma2(rows: torch.Tensor) -> torch.Tensor:
    """Each row's mean square as ggml's legacy importance paths take it: x*x summed in order
    from 0 in float32, over the row's length. Where the Triton kernels apply (a GPU) one kernel
    sums every row; on a CPU numpy's ``add.accumulate`` (strictly in order, in float32) sums
    slices of a few million values, each row in one pass; elsewhere the positions are walked
    across the rows of a slice (one launch per column)."""
    n = rows.shape[1]
    if triton_search.applies(rows):
        return div_by(triton_search.row_square_sums(rows.contiguous()), n)
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
    step = max(1, (1 << 22) // n)
    for r in range(0, rows.shape[0], step):
        part = rows[r : r + step].to(torch.float32)
        if rows.device.type == "cpu":
            squares = np.square(part.numpy())
            sums = torch.from_numpy(np.add.accumulate(squares, axis=1, out=squares)[:, -1].copy())
        else:
            xt = part.T
            sums = seq_sum(xt * xt)
        out[r : r + step] = div_by(sums, n)
    return out


def _quantize_padded(codec: Codec, part: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                     chunk: int, work: Workspace) -> None:
    """A tensor's last, short chunk, filled up to ``chunk`` blocks with zeros (which quantize
    on their own and are dropped)."""
    n = part.shape[0]
    x = work.take("padded", (chunk, codec.block_size), torch.float32, part.device)
    x[:n] = part
    x[n:] = 0
    if weights is not None:
        weights = torch.cat([weights, weights.new_ones(chunk - n, codec.block_size)])
    padded_out = work.take("padded_out", (chunk, codec.type_size), torch.uint8, part.device)
    codec.quantize_blocks_into(x, padded_out, weights, work)
    out.copy_(padded_out[:n])


def dequantize(raw: torch.Tensor, qtype: str | QType, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """ggml blocks (uint8, any shape holding the right byte count) -> float32 of ``shape``."""
    codec = get_codec(qtype)
    numel = 1
    for s in shape:
        numel *= s
    if numel % codec.block_size or raw.numel() != numel // codec.block_size * codec.type_size:
        raise ValueError(f"{raw.numel()} bytes do not hold a {codec.name} tensor of shape {tuple(shape)}")
    blocks = raw.reshape(-1, codec.type_size)
    out = torch.empty(blocks.shape[0], codec.block_size, dtype=torch.float32, device=raw.device)
    step = max(1, CHUNK_ELEMENTS // codec.block_size)
    for b in range(0, blocks.shape[0], step):
        out[b : b + step] = codec.dequantize_blocks(blocks[b : b + step])
    return out.reshape(shape)


__all__ = [
    "CODECS", "TYPE_NAMES", "QUANTIZED_TYPE_NAMES", "Codec", "QType", "get_codec", "parse_type_list",
    "bits_per_weight", "row_bytes", "quantize", "dequantize",
]
