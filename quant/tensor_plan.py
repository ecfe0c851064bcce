"""A recipe applied to a checkpoint: the output type of every tensor (its *plan*).

Under the fixed policy of ``quant.models`` only block weights follow the recipe; everything
else stays F32. From the plan come the exact average bits per parameter over the whole
file and the file name ``<model>_mxN_N.gguf``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import codecs
from .models import Model
from .recipe import Recipe

# Where a row does not fill the type's blocks, take the type llama.cpp falls back to.
_FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0",
             "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class TensorPlan:
    """How one source tensor is written."""

    key: str  # name in the GGUF (prefix stripped)
    source_key: str  # name in the source checkpoint
    shape: tuple[int, ...]
    qtype: str
    block: int | None
    decided: bool = False  # by the recipe (a block's quantizable weight); else F32 by policy

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel // codecs.get_codec(self.qtype).block_size * codecs.get_codec(self.qtype).type_size


def tensor_type(qtype: str, shape: Sequence[int]) -> str:
    """``qtype`` if the rows fill its blocks, else llama.cpp's fallback, else F16."""
    for candidate in (qtype, _FALLBACK.get(qtype, "F16")):
        if shape[-1] % codecs.get_codec(candidate).block_size == 0:
            return candidate
    return "F16"


def plan_tensors(model: Model, shapes: Mapping[str, Sequence[int]], recipe: Recipe) -> list[TensorPlan]:
    """The output type of every tensor of the model, in source order."""
    recipe.check_fits(model)
    plan = []
    for source_key, shape in shapes.items():
        if not source_key.startswith(model.prefix):  # beside the model in a full checkpoint (its VAE...)
            continue
        key = model.strip_prefix(source_key)
        block = model.block_of(key)
        decided = model.is_quantizable(key, shape)
        qtype = tensor_type(recipe.types[block], shape) if decided else "F32"
        plan.append(TensorPlan(key, source_key, tuple(shape), qtype, block, decided))
    return plan


def average_bpw(plan: Sequence[TensorPlan]) -> float:
    """Bits per parameter over every tensor in the file."""
    return 8 * sum(t.nbytes for t in plan) / sum(t.numel for t in plan)


def block_params(plan: Sequence[TensorPlan], n_blocks: int) -> list[int]:
    """Parameters the recipe decides in each block (its quantizable weights)."""
    counts = [0] * n_blocks
    for t in plan:
        if t.decided:
            counts[t.block] += t.numel
    return counts


def output_name(model_name: str, bpw: float) -> str:
    """``flux1-dev.safetensors``, 6.93 -> ``flux1-dev_mx6_9.gguf``."""
    stem = Path(model_name).name
    for suffix in (".safetensors", ".gguf", ".sft", ".ckpt", ".pt", ".bin"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}_mx" + f"{bpw:.1f}".replace(".", "_") + ".gguf"
