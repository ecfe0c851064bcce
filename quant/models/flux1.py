"""FLUX.1 [dev] and [schnell] (Kontext and Krea share the layout), in the BFL/ComfyUI single-file layout.

Source: Black Forest Labs' reference ``flux/model.py`` and ``flux/modules/layers.py``
(DoubleStreamBlock, SingleStreamBlock, MLPEmbedder, LastLayer), as ComfyUI's
``comfy/ldm/flux`` implements them; ComfyUI's ``model_detection.py`` recognizes it by
``double_blocks.0.img_attn.proj.weight`` and counts ``double_blocks`` / ``single_blocks``,
and takes ``guidance_in`` for [dev] (no ``guidance_in``: [schnell]). ComfyUI-GGUF loads it
as ``general.architecture = flux`` and keeps 1-D and small tensors unquantized; its
llama.cpp patch also keeps ``img_in``, ``txt_in``, ``time_in``, ``vector_in``,
``guidance_in`` and ``final_layer`` (all outside blocks here, so F32).

Blocks: 19 double-stream then 38 single-stream blocks (57) for [dev] and [schnell].
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .family import ArchitectureError, BlockGroup, Family, Model, Shapes, count_blocks, linear, need

# Head size of FLUX.1's attention; the rotary axes split it (16, 56, 56).
FLUX1_HEAD_DIM = 128


@dataclass(frozen=True)
class FluxConfig:
    """FLUX.1's dimensions; the defaults are FLUX.1 [dev]'s."""

    hidden_size: int = 3072
    heads: int = 24
    depth_double: int = 19
    depth_single: int = 38
    context_in_dim: int = 4096  # T5-XXL's width
    vec_in_dim: int = 768  # CLIP-L's pooled width
    mlp_hidden: int = 12288
    in_channels: int = 16  # latent channels; a token packs 2x2 of them
    guidance: bool = True  # [dev]: guidance_in; [schnell] has none

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Rotary dimensions per position axis (time, height, width): (16, 56, 56) at head size 128."""
        spatial = self.head_dim * 7 // 16
        return self.head_dim - 2 * spatial, spatial, spatial

    @classmethod
    def at_width(cls, hidden_size: int, depth_double: int, depth_single: int, guidance: bool = True) -> FluxConfig:
        """FLUX.1's head size and text widths at this width and depth."""
        return cls(hidden_size=hidden_size, heads=hidden_size // FLUX1_HEAD_DIM, depth_double=depth_double,
                   depth_single=depth_single, mlp_hidden=4 * hidden_size, guidance=guidance)



class Flux1(Family):
    name = "flux1"
    title = "FLUX.1"
    gguf_arch = "flux"
    legacy_arch = "flux"  # cost tables and recipes before families named FLUX.1 by its GGUF arch
    groups = (BlockGroup("double", "double_blocks", "depth_double"),
              BlockGroup("single", "single_blocks", "depth_single"))
    recognized_by = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "time_in.in_layer.weight",
                     "vector_in.in_layer.weight")
    identity_keys = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "final_layer.linear.weight")
    Config = FluxConfig
    configs = {
        "flux1-dev": FluxConfig(),
        "flux1-schnell": FluxConfig(guidance=False),
        # FLUX.1's widths, shallow: what ComfyUI's model detection assumes, so it loads unpatched.
        "flux1-stock": FluxConfig.at_width(3072, 2, 4),
    }
    tiny = FluxConfig(hidden_size=256, heads=4, depth_double=2, depth_single=4, context_in_dim=256,
                      mlp_hidden=1024)
    reference_tokens = 4608  # 1024x1024: 4096 image tokens (16x16 pixels each) and 512 of T5 text
    block_timing = "FLUX.1's reference blocks"

    @classmethod
    def reference_stack(cls, model: Model, source: Any, device: Any = "cpu", dtype: Any = None) -> Any:
        import torch

        from .flux1_blocks import ReferenceStack

        return ReferenceStack(model, source, device, dtype or torch.float32)

    @classmethod
    def block_runs(cls, model: Model, weights: Callable[[int], dict[str, Any]], tokens: int, device: Any,
                   dtype: Any, gen: Any) -> dict[str, Callable[[], object]]:
        from .flux1_blocks import block_runs

        return block_runs(model, weights, tokens, device, dtype, gen)

    @classmethod
    def describe(cls, config: FluxConfig) -> str:
        variant = "dev" if config.guidance else "schnell"
        return (f"FLUX.1 [{variant}] ({config.depth_double} double + {config.depth_single} single blocks, "
                f"hidden {config.hidden_size})")

    @classmethod
    def shapes(cls, config: FluxConfig) -> Shapes:
        h, m = config.hidden_size, config.mlp_hidden
        shapes: Shapes = {}
        linear(shapes, "img_in", config.in_channels * 4, h)
        embedders = [("time_in", 256), ("vector_in", config.vec_in_dim)] + [("guidance_in", 256)] * config.guidance
        for embedder, n_in in embedders:
            linear(shapes, f"{embedder}.in_layer", n_in, h)
            linear(shapes, f"{embedder}.out_layer", h, h)
        linear(shapes, "txt_in", config.context_in_dim, h)
        stream_blocks(shapes, config.depth_double, config.depth_single, h, config.head_dim, m, m, modulation=True)
        linear(shapes, "final_layer.linear", h, 4 * config.in_channels)
        linear(shapes, "final_layer.adaLN_modulation.1", h, 2 * h)
        return shapes

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> FluxConfig:
        hidden, patch_values = need(keys, "img_in.weight", cls.title)
        head_dim = read_head_dim(keys, hidden, cls.title)
        for key in ("final_layer.linear.weight", "double_blocks.0.img_mlp.0.weight"):
            need(keys, key, cls.title)
        return FluxConfig(
            hidden_size=hidden, heads=hidden // head_dim,
            depth_double=count_blocks(keys, "double_blocks", cls.title),
            depth_single=count_blocks(keys, "single_blocks", cls.title),
            context_in_dim=need(keys, "txt_in.weight", cls.title)[1],
            vec_in_dim=need(keys, "vector_in.in_layer.weight", cls.title)[1],
            mlp_hidden=keys["double_blocks.0.img_mlp.0.weight"][0], in_channels=patch_values // 4,
            guidance="guidance_in.in_layer.weight" in keys)


def stream_blocks(shapes: Shapes, depth_double: int, depth_single: int, hidden: int, head_dim: int, mlp_in: int,
                  mlp_out: int, modulation: bool, bias: bool = True) -> None:
    """FLUX's double-stream then single-stream blocks, shared by FLUX.1, Chroma and FLUX.2: ``mlp_in``
    outputs of the MLP's first layer (FLUX.2's gate and value: twice its width), ``mlp_out`` inputs
    of its last; ``modulation``: each block has its own (FLUX.1), else they come from outside."""
    for i in range(depth_double):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}"
            if modulation:
                linear(shapes, f"{b}_mod.lin", hidden, 6 * hidden, bias)
            linear(shapes, f"{b}_attn.qkv", hidden, 3 * hidden, bias)
            _qk_norm(shapes, f"{b}_attn.norm", head_dim)
            linear(shapes, f"{b}_attn.proj", hidden, hidden, bias)
            linear(shapes, f"{b}_mlp.0", hidden, mlp_in, bias)
            linear(shapes, f"{b}_mlp.2", mlp_out, hidden, bias)
    for i in range(depth_single):
        b = f"single_blocks.{i}"
        linear(shapes, f"{b}.linear1", hidden, 3 * hidden + mlp_in, bias)
        linear(shapes, f"{b}.linear2", hidden + mlp_out, hidden, bias)
        _qk_norm(shapes, f"{b}.norm", head_dim)
        if modulation:
            linear(shapes, f"{b}.modulation.lin", hidden, 3 * hidden, bias)


def _qk_norm(shapes: Shapes, prefix: str, head_dim: int) -> None:
    shapes[f"{prefix}.query_norm.scale"] = (head_dim,)
    shapes[f"{prefix}.key_norm.scale"] = (head_dim,)


def read_head_dim(keys: Mapping[str, tuple[int, ...]], hidden: int, title: str) -> int:
    """The attention's head size, from double block 0's query norm (its fused qkv checked against
    ``hidden``); ArchitectureError where the attention the blocks compute cannot be known."""
    qkv = need(keys, "double_blocks.0.img_attn.qkv.weight", title)
    if qkv != (3 * hidden, hidden):
        raise ArchitectureError(f"double_blocks.0.img_attn.qkv.weight has shape {qkv}, "
                                f"expected {(3 * hidden, hidden)} for hidden size {hidden}")
    head_key = "double_blocks.0.img_attn.norm.query_norm.scale"
    head_dim = keys.get(head_key, (0,))[0]
    if not head_dim or hidden % head_dim:
        raise ArchitectureError(f"{head_key} has shape {keys.get(head_key)}, expected (head size,) dividing {hidden}")
    return head_dim
