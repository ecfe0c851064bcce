"""Weight patches (LoRAs and the like) baked into a checkpoint as its tensors are read.

A patched tensor is made when it is read: the base weight copied to float32, the patches
added at float32, then quantized and dropped. The patched model never exists whole in memory,
and no patched value is rounded to bf16 before its quantization rounds it.

The base checkpoint stays what identifies the model (``Source.base``): a LoRA does not make
costs measured on the base model "another model's". What was baked in is recorded apart, as
the LoRAs' names and strengths (``BakedLora``), in the GGUF and in cost tables.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .checkpoint import Source

LORAS_KEY = "loras"  # mxgguf.loras in a GGUF, "loras" in a cost table's provenance
# (source key, rows start.. of its base weight as a float32 copy on the patching device, start)
# -> those rows patched (float32, in place or new)
PatchFn = Callable[[str, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class BakedLora:
    """One LoRA (or other patch set) baked into a file: its name and model strength (None where
    unknown, e.g. patches no LoRA loader made)."""

    name: str
    strength: float | None

    def describe(self) -> str:
        return self.name if self.strength is None else f"{self.name} at {self.strength:g}"


def describe_loras(loras: Sequence[BakedLora]) -> str:
    return ", ".join(lora.describe() for lora in loras) if loras else "none"


def lora_records(loras: Sequence[BakedLora]) -> list[dict[str, Any]]:
    """The LoRAs as a file, a table or ``inspect --json`` records them: {"name", "strength"} each."""
    return [asdict(lora) for lora in loras]


def loras_json(loras: Sequence[BakedLora]) -> str:
    return json.dumps(lora_records(loras))


def parse_loras(value: Any) -> list[BakedLora]:
    """The LoRAs a file or table records (JSON text or a list); [] where it records none."""
    if value in (None, ""):
        return []
    items = json.loads(value) if isinstance(value, str) else value
    return [BakedLora(str(i["name"]), None if i.get("strength") is None else float(i["strength"])) for i in items]


def patched_source(source: Source, patch: PatchFn, keys: Collection[str],
                   device: torch.device | str | None = None, by_rows: bool = False) -> Source:
    """``source`` with the tensors in ``keys`` read through ``patch`` (on ``device``, default the
    CPU), as float32; every other tensor as it is. ``patch(key, rows, start)`` gets rows
    ``start..`` of the base tensor: with ``by_rows`` any rows, so the source reads rows as its base
    does; else always the whole tensor. Refuses keys the source lacks: a patch that lands nowhere
    would be lost silently."""
    keys = frozenset(keys)
    if missing := sorted(keys - source.shapes.keys()):
        raise ValueError(f"weight patches name {len(missing)} tensors {source.name} does not have, "
                         f"e.g. {missing[0]!r}")

    def float32(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device or "cpu", dtype=torch.float32, copy=True)

    def patched(key: str, rows: torch.Tensor, start: int) -> torch.Tensor:
        out = patch(key, float32(rows), start)
        if out.shape != rows.shape:
            raise ValueError(f"weight patches change {key} from {tuple(rows.shape)} to {tuple(out.shape)}; "
                             f"a file of this model cannot hold that (a LoRA for a resized model?)")
        return out

    def read(key: str) -> torch.Tensor:
        return patched(key, source.read(key), 0) if key in keys else source.read(key)

    def read_rows(key: str, start: int, stop: int) -> torch.Tensor:
        rows = source.rows(key, start, stop)
        return patched(key, rows, start) if key in keys else rows

    dtypes = None if source.dtypes is None else {k: torch.float32 if k in keys else d
                                                   for k, d in source.dtypes.items()}
    return Source(source.name, source.shapes, read, source.sha256, dtypes,
                  read_rows if by_rows and source.read_rows else None, base=source.base or source)


def loras_metadata(loras: Sequence[BakedLora]) -> Mapping[str, str]:
    """What a GGUF records of the LoRAs baked into it (nothing where there are none, so a file
    without LoRAs is the same bytes as before)."""
    return {LORAS_KEY: loras_json(loras)} if loras else {}
