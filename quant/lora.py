"""LoRA files for the command line (``convert --lora FILE[:STRENGTH]``).

Two key formats name the checkpoint's own tensors, so they map without a model's help:
ComfyUI's generic ``diffusion_model.<tensor>`` and kohya's ``lora_unet_<tensor, dots as _>``,
each with ``.lora_up.weight``/``.lora_down.weight`` (or PEFT's ``lora_B``/``lora_A``) and an
optional ``.alpha``. Anything else (diffusers names, LoHa, LoKr, DoRA, mid weights) is refused
naming a key found: ComfyUI's loaders read those, and Mixed GGUF Quantize bakes what they load.

The math is ComfyUI's (``comfy.weight_adapter.lora``), in its order, so a file converted here
and one quantized from the same LoRA in ComfyUI are the same bytes:
``W += (strength * (alpha / rank)) * up @ down`` at float32, each LoRA in the order given.
A LoRA file is read as the tensors it patches are, a chunk of rows at a time: only its header
stays in memory, and a patched weight never exists whole at float32.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Source, open_safetensors
from .models import Model
from .patches import BakedLora, patched_source

LOG = logging.getLogger(__package__)
PAIRS = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"))
ALPHA = ".alpha"
GENERIC, KOHYA = "diffusion_model.", "lora_unet_"
TILE_ROWS = 1024  # rows of a LoRA's product made at once (a multiple of 64: see encode.chunk_rows)
# Keys of a text encoder's LoRA, which a diffusion model's file has no use for.
TEXT_ENCODER = re.compile(r"^(lora_te\d*_|text_encoders?\.|te\d*\.)")
FORMATS = ("ComfyUI's 'diffusion_model.<tensor>.lora_up.weight/.lora_down.weight' and kohya's "
           "'lora_unet_<tensor>.lora_up.weight/.lora_down.weight' (or lora_B/lora_A, with .alpha)")


class LoraError(ValueError):
    """A LoRA file convert cannot bake into this checkpoint."""


@dataclass(frozen=True)
class LoraSpec:
    """``FILE[:STRENGTH]`` as given on the command line."""

    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(Path(head), float(tail))
            except ValueError:
                pass  # a ':' of the path itself
        return cls(Path(text))


@dataclass
class LoraModule:
    """One patched tensor's pair: the LoRA's keys of up and down, and its alpha."""

    up: str = ""
    down: str = ""
    alpha: str = ""


@dataclass
class LoraFile:
    """An open LoRA file mapped onto a checkpoint: checkpoint key -> its module."""

    spec: LoraSpec
    source: Source
    modules: dict[str, LoraModule] = field(default_factory=dict)

    def add_to(self, key: str, rows: torch.Tensor, start: int) -> None:
        """Rows ``start..`` of the weight ``+= strength * alpha/rank * up @ down``, in place, as
        ComfyUI computes the whole weight's; a tile of TILE_ROWS rows of the product at a time
        (a row of it needs only that row of up)."""
        m = self.modules[key]
        down = self.source.read(m.down).to(rows.device, torch.float32).flatten(start_dim=1)
        scale = self.spec.strength * (self.source.read(m.alpha).item() / down.shape[0] if m.alpha else 1.0)
        flat = rows.view(rows.shape[0], -1)
        for i in range(0, rows.shape[0], TILE_ROWS):
            stop = min(i + TILE_ROWS, rows.shape[0])
            up = self.source.rows(m.up, start + i, start + stop).to(rows.device, torch.float32)
            flat[i:stop] += torch.mm(up.flatten(start_dim=1), down).mul_(scale)  # ComfyUI's (s*alpha)*diff


def module_names(model: Model, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """LoRA module name -> checkpoint key, for both formats, for every tensor a LoRA may patch."""
    names = {}
    for key in shapes:
        stem = model.strip_prefix(key)
        stem = stem.removesuffix(".weight")
        names[GENERIC + stem] = key
        names[KOHYA + stem.replace(".", "_")] = key
    return names


def split_key(key: str) -> tuple[str, str] | None:
    """(module name, role) of a LoRA key in a format convert reads; None for any other."""
    for up, down in PAIRS:
        if key.endswith(up):
            return key.removesuffix(up), "up"
        if key.endswith(down):
            return key.removesuffix(down), "down"
    if key.endswith(ALPHA):
        return key.removesuffix(ALPHA), "alpha"
    return None


def map_lora(spec: LoraSpec, lora: Source, model: Model, shapes: Mapping[str, tuple[int, ...]]) -> LoraFile:
    """The LoRA's modules on the checkpoint's tensors; LoraError naming the first thing that does
    not fit (an unread format, a module naming no tensor, a pair cut in half, a wrong shape)."""
    names = module_names(model, shapes)
    out = LoraFile(spec, lora)
    unread, foreign, skipped = [], [], 0
    for key in lora.shapes:
        if TEXT_ENCODER.match(key):
            skipped += 1
            continue
        split = split_key(key)
        if split is None or not split[0].startswith((GENERIC, KOHYA)):
            unread.append(key)
        elif split[0] not in names:
            foreign.append(split[0])
        else:
            setattr(out.modules.setdefault(names[split[0]], LoraModule()), split[1], key)
    name = spec.path.name
    if unread:
        raise LoraError(f"LoRA {name}: {len(unread)} keys in a format convert does not read, e.g. {unread[0]!r}; "
                        f"it reads {FORMATS}. Load this LoRA in ComfyUI and bake it with Mixed GGUF Quantize")
    if not out.modules:
        example = f", e.g. {foreign[0]!r}" if foreign else ""
        raise LoraError(f"LoRA {name} matches no tensor of this {model.family.title} checkpoint{example}: "
                        f"a LoRA for another model?")
    if foreign:
        raise LoraError(f"LoRA {name}: {len(set(foreign))} of its modules name no tensor of this "
                        f"{model.family.title} checkpoint, e.g. {foreign[0]!r}: a LoRA for another model?")
    for key, m in out.modules.items():
        check_module(name, key, m, lora.shapes, shapes[key])
    if skipped:
        LOG.info("LoRA %s: %d text-encoder keys left out (a diffusion model's file has no text encoder)",
                 name, skipped)
    return out


def check_module(name: str, key: str, m: LoraModule, lora_shapes: Mapping[str, tuple[int, ...]],
                 shape: tuple[int, ...]) -> None:
    if not m.up or not m.down:
        raise LoraError(f"LoRA {name}: {key} has a {'down' if m.down else 'up'} matrix without its "
                        f"{'up' if m.down else 'down'} one")
    up, down = lora_shapes[m.up], lora_shapes[m.down]
    # up (out, rank[, 1, 1]) @ down (rank, in...) flattened, as ComfyUI multiplies them
    if (len(up) < 2 or len(down) < 2 or math.prod(up[2:]) != 1 or up[0] != shape[0] or up[1] != down[0]
            or math.prod(down[1:]) != math.prod(shape[1:])):
        raise LoraError(f"LoRA {name}: {key} is {shape}, its up {up} x down {down} is not")
    if m.alpha and math.prod(lora_shapes[m.alpha]) != 1:
        raise LoraError(f"LoRA {name}: {m.alpha} holds {lora_shapes[m.alpha]} values, not one alpha")


@contextlib.contextmanager
def baked_in(source: Source, model: Model, specs: Sequence[LoraSpec],
             device: torch.device | str | None = None) -> Iterator[tuple[Source, list[BakedLora]]]:
    """``source`` with the LoRAs of ``specs`` baked in as it is read, and what the file records of
    them. A LoRA at strength 0 changes nothing and is left out, so the file is the unpatched one."""
    with contextlib.ExitStack() as stack:
        loras = []
        for spec in specs:
            lora = stack.enter_context(open_safetensors(spec.path, hash_file=False))
            mapped = map_lora(spec, lora, model, source.shapes)
            if spec.strength == 0:
                LOG.info("LoRA %s at strength 0 changes nothing: left out", spec.path.name)
            else:
                loras.append(mapped)
        if not loras:
            yield source, []
            return

        def patch(key: str, rows: torch.Tensor, start: int) -> torch.Tensor:
            for lora in loras:
                if key in lora.modules:
                    lora.add_to(key, rows, start)
            return rows

        keys = set().union(*(lora.modules for lora in loras))
        yield (patched_source(source, patch, keys, device, by_rows=True),
               [BakedLora(lora.spec.path.name, lora.spec.strength) for lora in loras])
