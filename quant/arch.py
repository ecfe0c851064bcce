"""What a FLUX-family checkpoint looks like: its tensors, its blocks, what stays F32.

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
FLUX1_HEAD_DIM = 128
# Tokens of a 1024x1024 sample: 4096 image tokens (16x16 pixels each) and 512 of T5 text.
REFERENCE_TOKENS = 4608
# Tensors whose leading values identify a model's weights (present in every FLUX).
IDENTITY_KEYS = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "final_layer.linear.weight")

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


@dataclass(frozen=True)
class FluxConfig:
    """A FLUX-family model's dimensions: every tensor's name and shape follows from them
    (``flux_shapes``). The defaults are a tiny test model."""

    hidden: int = 256
    heads: int = 4
    depth_double: int = 2
    depth_single: int = 4
    context_in_dim: int = 256
    vec_in_dim: int = 768
    mlp_ratio: float = 4.0
    in_channels: int = 16
    guidance: bool = True  # dev-style; schnell has no guidance_in

    @classmethod
    def flux1(cls, hidden: int, depth_double: int, depth_single: int, guidance: bool = True) -> FluxConfig:
        """FLUX.1's dimensions (head size 128, T5-XXL text states) at these widths and depths."""
        return cls(hidden=hidden, heads=hidden // FLUX1_HEAD_DIM, context_in_dim=4096,
                   depth_double=depth_double, depth_single=depth_single, guidance=guidance)

    @classmethod
    def from_fingerprint(cls, model: Mapping[str, object]) -> FluxConfig:
        """FLUX.1's dimensions for a model known only by its ``FluxArch.fingerprint()`` (a cost table's)."""
        return cls.flux1(int(model["hidden_size"]), int(model["depth_double"]), int(model["depth_single"]),
                         bool(model.get("guidance", True)))

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)


# FLUX.1's widths, shallow: what ComfyUI's model detection assumes, so it loads unpatched.
STOCK = FluxConfig.flux1(hidden=3072, depth_double=2, depth_single=4)
FLUX1_DEV = FluxConfig.flux1(hidden=3072, depth_double=19, depth_single=38)


def flux_shapes(cfg: FluxConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in checkpoint order."""
    h, m, head_dim = cfg.hidden, cfg.mlp_hidden, cfg.hidden // cfg.heads
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    def qk_norm(name: str) -> None:
        shapes[f"{name}.query_norm.scale"] = (head_dim,)
        shapes[f"{name}.key_norm.scale"] = (head_dim,)

    linear("img_in", cfg.in_channels * 4, h)
    for embedder, n_in in (("time_in", 256), ("vector_in", cfg.vec_in_dim)) + (
            (("guidance_in", 256),) if cfg.guidance else ()):
        linear(f"{embedder}.in_layer", n_in, h)
        linear(f"{embedder}.out_layer", h, h)
    linear("txt_in", cfg.context_in_dim, h)
    for i in range(cfg.depth_double):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}"
            linear(f"{b}_mod.lin", h, 6 * h)
            linear(f"{b}_attn.qkv", h, 3 * h)
            qk_norm(f"{b}_attn.norm")
            linear(f"{b}_attn.proj", h, h)
            linear(f"{b}_mlp.0", h, m)
            linear(f"{b}_mlp.2", m, h)
    for i in range(cfg.depth_single):
        b = f"single_blocks.{i}"
        linear(f"{b}.linear1", h, 3 * h + m)
        linear(f"{b}.linear2", h + m, h)
        qk_norm(f"{b}.norm")
        linear(f"{b}.modulation.lin", h, 3 * h)
    linear("final_layer.linear", h, 4 * cfg.in_channels)
    linear("final_layer.adaLN_modulation.1", h, 2 * h)
    return shapes


class ArchitectureError(ValueError):
    """The checkpoint is not a FLUX-family model in the BFL/ComfyUI layout."""


@dataclass(frozen=True)
class FluxArch:
    """A FLUX-family checkpoint's shape, read from its tensor shapes."""

    depth_double: int
    depth_single: int
    hidden_size: int
    has_guidance: bool
    head_dim: int  # of attention, from the q/k norm scales
    prefix: str = ""  # "" or "model.diffusion_model." as found in the source

    @property
    def n_blocks(self) -> int:
        return self.depth_double + self.depth_single

    @property
    def variant(self) -> str:
        return "flux-dev" if self.has_guidance else "flux-schnell"

    @property
    def heads(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Rotary dimensions per position axis (time, height, width): FLUX.1's (16, 56, 56) at 128."""
        spatial = self.head_dim * 7 // 16
        return self.head_dim - 2 * spatial, spatial, spatial

    def describe(self) -> str:
        return (f"{self.variant} ({self.depth_double} double + {self.depth_single} single blocks, "
                f"hidden {self.hidden_size})")

    def block_name(self, block: int) -> str:
        """``double_blocks.3`` / ``single_blocks.0`` for a block index."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} is out of range 0..{self.n_blocks - 1}")
        return block_name(block, self.depth_double)

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


def block_name(block: int, depth_double: int) -> str:
    """``double_blocks.3`` / ``single_blocks.0`` for a block index, double blocks first."""
    return f"double_blocks.{block}" if block < depth_double else f"single_blocks.{block - depth_double}"


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
    head_key = "double_blocks.0.img_attn.norm.query_norm.scale"
    head_dim = keys.get(head_key, (0,))[0]
    if not head_dim or hidden % head_dim:
        raise ArchitectureError(f"{head_key} has shape {keys.get(head_key)}, expected (head size,) dividing {hidden}")
    return FluxArch(depth_double, depth_single, hidden, "guidance_in.in_layer.weight" in keys, head_dim, prefix)


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
