"""A mixed model in memory as the bytes its GGUF will hold.

Quantizing is the slow part, so it happens once: the result can then be sampled
(each weight dequantized when a layer runs, as ComfyUI-GGUF does with a loaded file) and
saved (the bytes streamed to disk) without quantizing again. It takes as much memory as
the file it becomes, and no more: one tensor is quantized at a time.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from . import codecs
from .checkpoint import Source
from .encode import encode_tensor, imatrix_metadata
from .gguf_file import WriteResult, write_tensors
from .imatrix import Imatrix
from .models import Model
from .patches import BakedLora, loras_metadata
from .recipe import Recipe
from .tensor_plan import TensorPlan, average_bpw, plan_tensors

# Called after each tensor with (parameters done, parameters in all); may raise to cancel.
QuantizeProgress = Callable[[int, int], None]


@dataclass
class MixedModel:
    """A recipe applied to a model: the plan of every tensor and its encoded bytes (CPU)."""

    source_name: str
    model: Model
    recipe: Recipe
    plan: list[TensorPlan]
    encoded: dict[str, torch.Tensor]  # GGUF tensor name -> flat uint8
    predicted_cost: float | None = None
    quantize_metadata: dict[str, str | int] = field(default_factory=dict)  # the imatrix used, as llama.cpp says
    loras: list[BakedLora] = field(default_factory=list)  # baked into the weights (the source is patched)

    @property
    def bpw(self) -> float:
        return average_bpw(self.plan)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.plan)

    @cached_property
    def tensors(self) -> dict[str, TensorPlan]:
        return {t.key: t for t in self.plan}

    def dequantized(self, key: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The float32 values the GGUF's loader will see for tensor ``key``."""
        t = self.tensors[key]
        return codecs.dequantize(self.encoded[key].to(device or "cpu"), t.qtype, t.shape)

    def save(self, out_path: str | os.PathLike[str], *, name: str | None = None, overwrite: bool = False,
             progress: Callable[[int, int, str], None] | None = None) -> WriteResult:
        """Write the GGUF (atomic, read back), from the bytes already made; ``name`` is the
        model name it records (default: the source's)."""
        return write_tensors(name or self.source_name, self.recipe, self.plan, lambda t: self.encoded[t.key].numpy(),
                             out_path, overwrite=overwrite, progress=progress, quantize_metadata=self.quantize_metadata,
                             extra_metadata=loras_metadata(self.loras))


def quantize_model(source: Source, model: Model, recipe: Recipe, *, device: torch.device | str | None = None,
                   progress: QuantizeProgress | None = None, predicted_cost: float | None = None,
                   imatrix: Imatrix | None = None, imatrix_name: str = "",
                   loras: Sequence[BakedLora] = ()) -> MixedModel:
    """Quantize every tensor of ``source`` as ``recipe`` says, one at a time; with an
    ``imatrix`` of this model, each weight it covers with its importance. ``loras`` says what
    a patched ``source`` has baked in, for the file to record."""
    plan = plan_tensors(model, source.shapes, recipe)
    if imatrix is not None:
        imatrix.check_model({t.key: t.shape for t in plan})
    total, done = sum(t.numel for t in plan), 0
    encoded = {}
    for t in plan:
        encoded[t.key] = encode_tensor(source, t, device, imatrix.importance(t.key) if imatrix else None)
        done += t.numel
        if progress:
            progress(done, total)
    metadata = imatrix_metadata(imatrix, imatrix_name) if imatrix is not None else {}
    return MixedModel(source.name, model, recipe, plan, encoded, predicted_cost, metadata, list(loras))
