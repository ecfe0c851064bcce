"""One planned tensor of a checkpoint as the bytes a GGUF holds: read, checked, quantized.

A tensor of the wrong shape or dtype, or one holding NaN/Inf, is refused with its name:
quantizing it would write a broken weight that only fails at sampling time.
"""
from __future__ import annotations

import torch

from . import codecs
from .checkpoint import CheckpointError, Source
from .tensor_plan import TensorPlan


def encode_tensor(source: Source, t: TensorPlan, device: torch.device | str | None = None,
                  importance: torch.Tensor | None = None) -> torch.Tensor:
    """One planned tensor of ``source`` as the flat uint8 bytes the GGUF holds (on the CPU),
    quantized with ``importance`` (one value per input column) where given."""
    x = source.read(t.source_key)
    if tuple(x.shape) != t.shape:
        raise CheckpointError(f"{t.source_key} has shape {tuple(x.shape)}, the header says {t.shape}")
    x = x.to(device=device or "cpu")
    if not x.is_floating_point():
        raise CheckpointError(f"{t.source_key} holds {x.dtype} values, not floating-point weights")
    if x.dtype.itemsize == 1:  # fp8: isfinite is not implemented for it
        x = x.to(torch.bfloat16)
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise CheckpointError(f"{t.source_key} holds {bad} NaN/Inf values; refusing to quantize a broken weight")
    row = x.reshape(-1, t.shape[-1]) if x.dim() else x.reshape(1, 1)
    return codecs.quantize(row, t.qtype, imatrix=importance).cpu().reshape(-1)


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or Inf in x: its min and max are finite (NaN carries through both). One fast
    reduction, where ``isfinite(x).all()`` makes a mask of the whole tensor first."""
    if not x.numel():
        return True
    lo, hi = torch.aminmax(x.reshape(-1))
    return bool(torch.isfinite(lo) & torch.isfinite(hi))
