"""A checkpoint quantized into GGUF bytes: one planned tensor (read, checked, quantized), or
a whole plan streamed into a file by ``gguf_file``'s writer.

A tensor of the wrong shape or dtype, or one holding NaN/Inf, is refused with its name:
quantizing it would write a broken weight that only fails at sampling time.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import codecs
from .checkpoint import CheckpointError, Source
from .gguf_file import ProgressFn, WriteResult, write_tensors
from .imatrix import Imatrix
from .recipe import Recipe
from .tensor_plan import TensorPlan

# Values quantized at once, where the source reads rows: on the CPU few enough that a chunk (and a
# LoRA's float32 patch of it) adds little to resident memory, yet at least the size the codecs'
# compiled kernels start at; on a GPU many, as its launches want work.
CHUNK_VALUES = {"cpu": 1 << 23, "other": 1 << 26}


def encode_tensor(source: Source, t: TensorPlan, device: torch.device | str | None = None,
                  importance: torch.Tensor | None = None) -> torch.Tensor:
    """One planned tensor of ``source`` as the flat uint8 bytes the GGUF holds (on the CPU),
    quantized with ``importance`` (one value per input column) where given.

    Where the source reads rows (a file), a weight is read and quantized a chunk of rows at a
    time: ggml quantizes each row alone, so the bytes are the whole tensor's, and a tensor
    patched as it is read (a LoRA) never exists whole at float32."""
    if len(t.shape) < 2 or source.read_rows is None:
        return encode_rows(source.read(t.source_key), t, t.shape, device, importance)
    out = torch.empty(t.nbytes, dtype=torch.uint8)
    done, step = 0, chunk_rows(t.shape, CHUNK_VALUES["cpu" if torch.device(device or "cpu").type == "cpu" else "other"])
    for start in range(0, t.shape[0], step):
        stop = min(start + step, t.shape[0])
        chunk = encode_rows(source.rows(t.source_key, start, stop), t, (stop - start, *t.shape[1:]), device,
                            importance, f" (rows {start}-{stop - 1})")
        out[done:done + chunk.numel()] = chunk
        done += chunk.numel()
    return out


def chunk_rows(shape: tuple[int, ...], values: int) -> int:
    """Rows of a chunk: the tensor cut into equal chunks of at least ``values`` values (a small last
    one would miss the codecs' compiled kernels), each a multiple of 64 rows (float32 matrix
    products of 64-row tiles round as the whole product does, so a LoRA's update is the same)."""
    chunks = max(1, math.prod(shape) // values)
    return 64 * max(1, math.ceil(shape[0] / chunks / 64))


def encode_rows(x: torch.Tensor, t: TensorPlan, shape: tuple[int, ...], device: torch.device | str | None,
                importance: torch.Tensor | None, where: str = "") -> torch.Tensor:
    """``x`` (the rows of ``t`` expected in ``shape``) checked and quantized: flat uint8 on the CPU."""
    if tuple(x.shape) != shape:
        raise CheckpointError(f"{t.source_key}{where} has shape {tuple(x.shape)}, the header says {shape}")
    x = x.to(device=device or "cpu")
    if not x.is_floating_point():
        raise CheckpointError(f"{t.source_key} holds {x.dtype} values, not floating-point weights")
    if x.dtype.itemsize == 1:  # fp8: isfinite is not implemented for it
        x = x.to(torch.bfloat16)
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise CheckpointError(f"{t.source_key}{where} holds {bad} NaN/Inf values; refusing to quantize a broken weight")
    row = x.reshape(-1, t.shape[-1]) if x.dim() else x.reshape(1, 1)
    return codecs.quantize(row, t.qtype, imatrix=importance).cpu().reshape(-1)


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or Inf in x: its min and max are finite (NaN carries through both). One fast
    reduction, where ``isfinite(x).all()`` makes a mask of the whole tensor first."""
    if not x.numel():
        return True
    lo, hi = torch.aminmax(x.reshape(-1))
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def write_gguf(source: Source, recipe: Recipe, plan: Sequence[TensorPlan], out_path: str | os.PathLike[str], *,
               overwrite: bool = False, progress: ProgressFn | None = None, device: torch.device | str | None = None,
               extra_metadata: Mapping[str, str] | None = None, imatrix: Imatrix | None = None,
               imatrix_name: str = "") -> WriteResult:
    """Quantize ``source`` per ``plan`` into ``out_path``; return what was written.

    ``progress`` is called after each tensor and may raise to cancel; an exception at any
    point leaves no file behind. ``device`` runs the codecs there (default: CPU). With an
    ``imatrix`` (of this model), each weight it covers is quantized with its importance, and
    the file records it as llama-quantize does (``quantize.imatrix.*``).
    """
    quantize_metadata = {}
    if imatrix is not None:
        imatrix.check_model({t.key: t.shape for t in plan})
        quantize_metadata = imatrix_metadata(imatrix, imatrix_name)

    def encode(t: TensorPlan) -> np.ndarray:
        importance = imatrix.importance(t.key) if imatrix is not None else None
        return encode_tensor(source, t, device, importance).numpy()

    return write_tensors(source.name, recipe, plan, encode, out_path, source_sha256=source.sha256,
                         overwrite=overwrite, progress=progress, extra_metadata=extra_metadata,
                         quantize_metadata=quantize_metadata)


def imatrix_metadata(imatrix: Imatrix, file_name: str) -> dict[str, str | int]:
    """What llama-quantize records of the importance matrix it used."""
    return {"quantize.imatrix.file": file_name,
            "quantize.imatrix.dataset": imatrix.datasets[0] if imatrix.datasets else "",
            "quantize.imatrix.entries_count": len(imatrix.sums),
            "quantize.imatrix.chunks_count": imatrix.chunk_count}
