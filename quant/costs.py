"""Cost tables: how much each block hurts the output when quantized to each type.

A cost is the mean squared error of the block stack's final hidden state with only that
block quantized. A table keeps, per block x type, the *sum* of squared errors and the
number of values summed, so tables from many runs or machines merge by addition and the
mean stays exact. It carries its provenance: the model's fingerprint (tables of different
models refuse to merge) and the samples it was measured on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import codecs
from .atomic import atomic_write_text, load_json
from .checkpoint import Source
from .models import ArchitectureError, Model, from_fingerprint
from .patches import LORAS_KEY, BakedLora, describe_loras, parse_loras
from .recipe import Recipe

COSTS_FORMAT = "mxgguf-costs/1"
# What a table's costs are (its provenance's "measure"); tables of different measures never merge.
FINAL_HIDDEN_STATE = "final hidden state"  # measured: the blocks' output error, one block quantized
MODEL_OUTPUT = "model output"  # measured: the error of what the sampler receives, one block quantized
ESTIMATED = "estimate: weight error"  # from the weights alone (quant.estimate)
# Published tables shipped with the pack: used for any model of their shape (finetunes share
# their base's sensitivities), referred to as "builtin:<name>".
BUILTIN = {"flux1-dev": Path(__file__).parent / "builtin" / "flux1-dev.costs.json"}
_FINGERPRINT_VALUES = 4096


class CostError(ValueError):
    """A cost table that is malformed, or does not belong with the model or table at hand."""


def model_fingerprint(model: Model, source: Source | None = None) -> dict[str, Any]:
    """The model's family and config plus, given the checkpoint, a hash of a few of its weights.

    Values are hashed as bf16, the coarsest dtype checkpoints ship in, so the same model
    loaded as bf16, fp16 or fp32 has the same fingerprint. A patched source (a LoRA baked in)
    is its base checkpoint here: the patches are recorded apart.
    """
    fp = model.fingerprint()
    if source is not None:
        source = source.base or source
        h = hashlib.sha256()
        for key in model.family.identity_keys:
            x = source.read(model.prefix + key).detach().cpu().reshape(-1)[:_FINGERPRINT_VALUES]
            h.update(x.to(torch.float32).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
        fp["weights_sha256"] = h.hexdigest()[:16]
    return fp


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """None if fingerprints agree, else what differs. A missing weight hash matches any."""
    for key in sorted(set(a) | set(b)):
        if key == "weights_sha256" and (key not in a or key not in b):
            continue
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} vs {b.get(key)!r}"
    return None


@dataclass
class CostTable:
    """Per block x type: sum of squared errors and values counted."""

    model: dict[str, Any]
    types: list[str]
    sse: list[list[float]]  # [block][type]
    count: list[list[int]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return len(self.sse)

    @classmethod
    def empty(cls, model: Mapping[str, Any], n_blocks: int, types: Sequence[str]) -> CostTable:
        return cls(dict(model), list(types), [[0.0] * len(types) for _ in range(n_blocks)],
                   [[0] * len(types) for _ in range(n_blocks)])

    def add(self, block: int, qtype: str, sse: float, count: int) -> None:
        j = self.types.index(qtype)
        self.sse[block][j] += sse
        self.count[block][j] += count

    def mean(self, block: int, qtype: str) -> float | None:
        """The cost (MSE) of ``qtype`` at ``block``; None where it was never measured."""
        if qtype not in self.types:
            return None
        j = self.types.index(qtype)
        n = self.count[block][j]
        return self.sse[block][j] / n if n else None

    def costs(self) -> list[dict[str, float]]:
        """One dict per block: type -> cost, measured types only."""
        return [{t: c for t in self.types if (c := self.mean(b, t)) is not None} for b in range(self.n_blocks)]

    def merged(self, other: CostTable) -> CostTable:
        """This table plus ``other`` (same model): sums add, samples append, types unite."""
        if why := same_model(self.model, other.model):
            raise CostError(f"cost tables are for different models ({why}); they cannot be merged")
        if self.provenance.get("means_only") or other.provenance.get("means_only"):
            raise CostError("a published table holds means without counts; it cannot be merged with measurements")
        if self.n_blocks != other.n_blocks:
            raise CostError(f"cost tables have {self.n_blocks} and {other.n_blocks} blocks")
        if self.measure != other.measure:
            raise CostError(f"cost tables of different measures ({self.measure} and {other.measure}) cannot be "
                            f"merged: their costs are not on one scale")
        mine, theirs = self.provenance.get("imatrix"), other.provenance.get("imatrix")
        if mine != theirs:
            raise CostError(f"cost tables measured with different importance matrices ({mine or 'none'} and "
                            f"{theirs or 'none'}) cannot be merged: quantizing with one changes every cost")
        if self.loras != other.loras:
            raise CostError(f"cost tables measured with different LoRAs ({describe_loras(self.loras)} and "
                            f"{describe_loras(other.loras)}) cannot be merged: a LoRA changes the weights and "
                            f"the hidden states every cost is measured on")
        types = self.types + [t for t in other.types if t not in self.types]
        out = CostTable.empty({**other.model, **self.model}, self.n_blocks, types)
        for table in (self, other):
            for b in range(self.n_blocks):
                for j, t in enumerate(table.types):
                    out.add(b, t, table.sse[b][j], table.count[b][j])
        out.samples = self.samples + other.samples
        out.provenance = {**other.provenance, **self.provenance}
        return out

    def validate(self) -> None:
        if not self.types or not self.sse:
            raise CostError("the cost table is empty")
        for t in self.types:
            if t not in codecs.TYPE_NAMES:
                raise CostError(f"unknown type {t!r} in cost table; known: {', '.join(codecs.TYPE_NAMES)}")
        for b, (row, counts) in enumerate(zip(self.sse, self.count, strict=True)):
            if len(row) != len(self.types) or len(counts) != len(self.types):
                raise CostError(f"block {b}: {len(row)} values for {len(self.types)} types")
            for t, v, n in zip(self.types, row, counts):
                if not math.isfinite(v) or v < 0 or n < 0:
                    raise CostError(f"block {b} {t}: bad cost {v!r} (count {n}); costs are finite and >= 0")
        if not any(n for counts in self.count for n in counts):
            raise CostError("the cost table has no measurements")

    def to_dict(self) -> dict[str, Any]:
        return {"format": COSTS_FORMAT, "model": self.model, "provenance": self.provenance,
                "types": self.types, "sse": self.sse, "count": self.count, "samples": self.samples}

    @property
    def loras(self) -> list[BakedLora]:
        """The LoRAs the model carried when the costs were measured (tables from before: none)."""
        return parse_loras(self.provenance.get(LORAS_KEY))

    def other_loras(self, loras: Sequence[BakedLora]) -> str | None:
        """What to tell someone quantizing a model with ``loras`` on these costs, where they were
        measured with other LoRAs (a published table, of the base model, says nothing)."""
        if self.estimated or self.loras == list(loras) or (self.provenance.get("means_only") and not self.loras):
            return None
        return f"costs measured with LoRAs: {describe_loras(self.loras)}"

    @property
    def measure(self) -> str:
        """What the costs are: measured final-state errors (tables from before this was recorded
        too), or an estimate from the weights."""
        return str(self.provenance.get("measure", FINAL_HIDDEN_STATE))

    @property
    def estimated(self) -> bool:
        return self.measure == ESTIMATED

    @property
    def family_model(self) -> Model:
        """The model the table was measured on, at its family's tensor shapes."""
        return from_fingerprint(self.model)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostTable:
        if not isinstance(d, Mapping) or d.get("format") != COSTS_FORMAT:
            raise CostError(f"not a cost table (expected format {COSTS_FORMAT!r})")
        try:
            t = cls(_normalized(d["model"]), list(d["types"]), [[float(v) for v in r] for r in d["sse"]],
                    [[int(v) for v in r] for r in d["count"]], list(d.get("samples", [])),
                    dict(d.get("provenance", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise CostError(f"malformed cost table: {e!r}") from None
        t.validate()
        return t


def _normalized(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A table's model fingerprint with every field of its family's config (a table written
    before a field existed, or before families, takes the defaults: the family's main model)."""
    try:
        model = from_fingerprint(fingerprint)
    except (ArchitectureError, TypeError) as e:
        raise CostError(f"the table's model is not one this pack knows: {e}") from None
    extra = {k: fingerprint[k] for k in ("weights_sha256",) if k in fingerprint}
    return {**model.fingerprint(), **extra}


def load_costs(path: str | os.PathLike[str]) -> CostTable:
    return load_json(path, CostTable.from_dict, CostError)  # NaN/Infinity reach validate()


def save_costs(table: CostTable, path: str | os.PathLike[str]) -> None:
    table.validate()
    atomic_write_text(Path(path), json.dumps(table.to_dict(), indent=1))


def accumulate(path: str | os.PathLike[str], table: CostTable) -> CostTable:
    """Merge ``table`` into the file at ``path`` (created if absent), atomically; return the sum."""
    path = Path(path)
    total = load_costs(path).merged(table) if path.exists() else table
    save_costs(total, path)
    return total


def resolve_costs(spec: str | os.PathLike[str]) -> CostTable:
    """A costs file, or ``builtin:<name>`` for a table shipped with the pack."""
    text = str(spec)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN:
            raise CostError(f"no built-in cost table {name!r}; built-in: {', '.join(BUILTIN)}")
        return load_costs(BUILTIN[name])
    return load_costs(text)


def check_model(table: CostTable, model: Mapping[str, Any]) -> None:
    """Refuse costs measured on another model (a table without a weights hash fits any of its shape)."""
    if why := same_model(table.model, model):
        theirs, ours = table.family_model, from_fingerprint(model)
        if theirs.family is not ours.family or theirs.config != ours.config:
            why = f"they are for {theirs.describe()}, this model is {ours.describe()}"
        raise CostError(f"the costs are for another model ({why})")


def default_costs(model: Mapping[str, Any]) -> CostTable | None:
    """The built-in table that fits ``model``'s shape, if any."""
    for path in BUILTIN.values():
        table = load_costs(path)
        if same_model(table.model, model) is None:
            return table
    return None


def noting_costs(recipe: Recipe, table: CostTable, name: str) -> Recipe:
    """``recipe`` with a note of the costs it was chosen by, ``name`` (a file, ``builtin:...``) or
    that they were estimated: the GGUF records it in its recipe, and ``inspect`` shows it."""
    return dataclasses.replace(recipe, notes={**recipe.notes, "costs": "estimated from the weights"
                                              if table.estimated else name})
