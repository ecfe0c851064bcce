"""What a FLUX-family checkpoint looks like: its blocks, what stays F32, its sizes.

All architecture knowledge lives here. A *block* is the unit the method mixes types over:
FLUX.1's ``double_blocks.0..D-1`` are blocks ``0..D-1`` and ``single_blocks.0..S-1`` follow
as ``D..D+S-1`` (19 + 38 = 57 for FLUX.1-dev and -schnell). Only 2-D weights inside a block
are quantized; the embedders, the final layer and every 1-D tensor (biases, norm scales)
stay F32, as llama.cpp and ComfyUI-GGUF's own converter keep them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

COMFY_PREFIX = "model.diffusion_model."
GGUF_ARCH = "flux"

_BLOCK_KEY = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.")
# Keys by which other layouts are recognised, so the refusal can say what was found.
_DIFFUSERS_FLUX = ("transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_q.weight")
_OTHER_ARCHS = (
    ("distilled_guidance_layer.", "Chroma"),
    ("joint_blocks.", "SD3/SD3.5"),
    ("input_blocks.", "SD1.x/SDXL UNet"),
    ("transformer_blocks.0.img_mod.", "Qwen-Image"),
    ("blocks.0.self_attn.", "Wan"),
    ("model.layers.0.", "a language model"),
)


class ArchitectureError(ValueError):
    """The checkpoint is not a FLUX-family model in the BFL/ComfyUI layout."""


@dataclass(frozen=True)
class FluxArch:
    """A FLUX-family checkpoint's shape, read from its tensor shapes."""

    depth_double: int
    depth_single: int
    hidden_size: int
    has_guidance: bool
    prefix: str = ""  # "" or "model.diffusion_model." as found in the source

    @property
    def n_blocks(self) -> int:
        return self.depth_double + self.depth_single

    @property
    def variant(self) -> str:
        return "flux-dev" if self.has_guidance else "flux-schnell"

    def describe(self) -> str:
        return (f"{self.variant} ({self.depth_double} double + {self.depth_single} single blocks, "
                f"hidden {self.hidden_size})")

    def block_name(self, block: int) -> str:
        """``double_blocks.3`` / ``single_blocks.0`` for a block index."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} is out of range 0..{self.n_blocks - 1}")
        if block < self.depth_double:
            return f"double_blocks.{block}"
        return f"single_blocks.{block - self.depth_double}"

    def block_of(self, key: str) -> int | None:
        """The block index a tensor belongs to (key without prefix), or None outside blocks."""
        m = _BLOCK_KEY.match(key)
        if m is None:
            return None
        i = int(m.group(2))
        return i if m.group(1) == "double_blocks" else self.depth_double + i

    def is_quantizable(self, key: str, shape: Sequence[int]) -> bool:
        """True for the 2-D weights inside blocks: the only tensors a recipe decides."""
        return self.block_of(key) is not None and len(shape) == 2

    def strip_prefix(self, key: str) -> str:
        return key[len(self.prefix):] if self.prefix and key.startswith(self.prefix) else key

    def fingerprint(self) -> dict[str, object]:
        return {"arch": GGUF_ARCH, "depth_double": self.depth_double, "depth_single": self.depth_single,
                "hidden_size": self.hidden_size, "guidance": self.has_guidance}


def detect(shapes: Mapping[str, Sequence[int]]) -> FluxArch:
    """Read the FLUX layout from a checkpoint's tensor names and shapes, or refuse it.

    Accepts the BFL layout, bare or under ComfyUI's ``model.diffusion_model.`` prefix.
    Raises ArchitectureError naming what was found otherwise.
    """
    if not shapes:
        raise ArchitectureError("the checkpoint holds no tensors")
    prefix = COMFY_PREFIX if any(k.startswith(COMFY_PREFIX) for k in shapes) else ""
    keys = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    if "img_in.weight" not in keys or "double_blocks.0.img_attn.qkv.weight" not in keys:
        raise ArchitectureError(f"not a FLUX checkpoint in the BFL/ComfyUI layout: {_what_it_is(shapes)}")
    depth_double = _count_blocks(keys, "double_blocks")
    depth_single = _count_blocks(keys, "single_blocks")
    hidden = keys["img_in.weight"][0]
    for key in ("txt_in.weight", "time_in.in_layer.weight", "vector_in.in_layer.weight",
                "final_layer.linear.weight"):
        if key not in keys:
            raise ArchitectureError(f"FLUX checkpoint is incomplete: {key} is missing")
    if keys["double_blocks.0.img_attn.qkv.weight"] != (3 * hidden, hidden):
        raise ArchitectureError(
            f"double_blocks.0.img_attn.qkv.weight has shape {keys['double_blocks.0.img_attn.qkv.weight']}, "
            f"expected {(3 * hidden, hidden)} for hidden size {hidden}")
    return FluxArch(depth_double, depth_single, hidden, "guidance_in.in_layer.weight" in keys, prefix)


def _count_blocks(keys: Mapping[str, object], kind: str) -> int:
    found = {int(m.group(2)) for k in keys if (m := _BLOCK_KEY.match(k)) and m.group(1) == kind}
    if found and found != set(range(max(found) + 1)):
        missing = sorted(set(range(max(found) + 1)) - found)
        raise ArchitectureError(f"FLUX checkpoint is missing {kind} {missing}")
    return len(found)


def _what_it_is(shapes: Mapping[str, object]) -> str:
    keys = list(shapes)
    bare = [k.removeprefix(COMFY_PREFIX).removeprefix("transformer.") for k in keys]
    if any(k.endswith(d) for k in keys for d in _DIFFUSERS_FLUX):
        return ("this is FLUX in the diffusers layout (transformer_blocks.*.attn.to_q ...); "
                "use the single-file BFL/ComfyUI checkpoint (double_blocks.*, single_blocks.*)")
    for marker, name in _OTHER_ARCHS:
        if any(k.startswith(marker) for k in bare + keys):
            return f"it looks like {name} (found {marker}*)"
    sample = ", ".join(sorted(keys)[:4])
    return f"found {len(keys)} tensors such as {sample}"
