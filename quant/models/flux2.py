"""FLUX.2 [dev] and FLUX.2 [klein] 4B / 9B (and their undistilled [klein] Base twins), in the BFL/ComfyUI
single-file layout.

Sources: Black Forest Labs' reference ``src/flux2/model.py`` (github.com/black-forest-labs/flux2 at
ab7cca68: ``Flux2Params``, ``Flux2``, ``DoubleStreamBlock``, ``SingleStreamBlock``, ``Modulation``,
``LastLayer``; the later ``Klein4BParams`` / ``Klein9BParams``, read in ports of that file, add
``use_guidance_embed=False``) and diffusers' ``scripts/convert_flux2_to_diffusers.py`` (the three
transformer configs, loaded with ``strict=True`` from the BFL keys). ComfyUI builds it (from late 2025;
the Oct 2025 ComfyUI this pack is tested with has no FLUX.2) with ``comfy/ldm/flux/model.py`` ``Flux``
at ``global_modulation=True, mlp_silu_act=True, ops_bias=False``; ``comfy/model_detection.py`` takes
the flux branch (``double_blocks.0.img_attn.norm.key_norm`` and ``img_in.weight``), picks image_model
"flux2" by ``double_stream_modulation_img.lin.weight``, reads hidden and latent widths from
``img_in.weight``, the text width from ``txt_in.weight``, guidance from ``guidance_in.in_layer.weight``
and counts the blocks, and hard-codes head size 128 (rope axes 4 x 32), MLP ratio 3, 128 output
channels and no biases. ComfyUI-GGUF has no FLUX.2 arch: its converter takes it for its ``flux``
template (``double_blocks.0.img_attn.proj.weight``, no kept list), its loader accepts
``general.architecture = flux`` and ComfyUI's detection picks the class.

Unlike FLUX.1 there are no biases, no ``vector_in`` (no pooled text vector) and no per-block
modulation: three shared Linears (``double_stream_modulation_img`` / ``_txt``, 6 x hidden;
``single_stream_modulation``, 3 x hidden) turn the timestep(+guidance) vector into the shift/scale/gate
every block of a group reads. They lie outside the blocks and so stay F32, as do ``img_in``, ``txt_in``,
``time_in``, ``guidance_in`` and ``final_layer``. The MLPs are SwiGLU (first Linear 2 x 3 x hidden
wide). Every 2-D tensor in a block is an ordinary Linear weight, so nothing in blocks needs keeping F32
beyond the common rules. The per-head RMSNorm gains are ``*.scale`` in the checkpoints (BFL's names;
newer ComfyUI renames them ``*.weight`` when it loads them).

Blocks: [dev] 8 double-stream then 48 single-stream (56); [klein] 4B 5 + 20 (25); [klein] 9B 8 + 24 (32).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .family import BlockGroup, Family, Shapes, count_blocks, linear, need
from .flux1 import read_head_dim, stream_blocks


@dataclass(frozen=True)
class Flux2Config:
    """FLUX.2's dimensions; the defaults are FLUX.2 [dev]'s. Every FLUX.2 has heads of 128."""

    hidden_size: int = 6144
    heads: int = 48
    depth_double: int = 8
    depth_single: int = 48
    context_in_dim: int = 15360  # three stacked hidden states of Mistral-Small-3.2 24B (3 x 5120)
    mlp_hidden: int = 18432  # 3 x hidden; the first MLP Linear is twice as wide (SwiGLU)
    in_channels: int = 128  # latent channels of a token: 32 VAE channels x 2 x 2, patchified by the VAE
    guidance: bool = True  # [dev]: guidance_in; [klein] has none

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads




class Flux2(Family):
    name = "flux2"
    title = "FLUX.2"
    gguf_arch = "flux"  # ComfyUI-GGUF's loader lists no flux2; ComfyUI's detection tells it from FLUX.1
    groups = (BlockGroup("double", "double_blocks", "depth_double"),
              BlockGroup("single", "single_blocks", "depth_single"))
    # The shared modulations are what ComfyUI tells FLUX.2 by; FLUX.1 and Chroma have none.
    recognized_by = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "double_stream_modulation_img.lin.weight",
                     "single_stream_modulation.lin.weight")
    # A pooled-text embedder or per-block modulation has no place in FLUX.2's layout (FLUX.1's tensors).
    not_with = ("vector_in.in_layer.weight", "double_blocks.0.img_mod.lin.weight")
    identity_keys = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "final_layer.linear.weight")
    Config = Flux2Config
    configs = {
        # huggingface.co/black-forest-labs/FLUX.2-dev (32 B); BFL flux2 Flux2Params.
        "flux2-dev": Flux2Config(),
        # huggingface.co/black-forest-labs/FLUX.2-klein-4B (and -klein-base-4B), Qwen3-4B text states (3 x 2560).
        "flux2-klein-4b": Flux2Config(hidden_size=3072, heads=24, depth_double=5, depth_single=20,
                                      context_in_dim=7680, mlp_hidden=9216, guidance=False),
        # huggingface.co/black-forest-labs/FLUX.2-klein-9B (and -klein-base-9B), Qwen3-8B text states (3 x 4096).
        "flux2-klein-9b": Flux2Config(hidden_size=4096, heads=32, depth_double=8, depth_single=24,
                                      context_in_dim=12288, mlp_hidden=12288, guidance=False),
    }
    # ComfyUI's detection reads the widths from img_in/txt_in and the depths, but fixes head size 128, MLP
    # ratio 3 and 128 latent channels: two heads, and every quantized row a multiple of 256. 8.5 M parameters.
    tiny = Flux2Config(hidden_size=256, heads=2, depth_double=2, depth_single=4, context_in_dim=768,
                       mlp_hidden=768)
    reference_tokens = 4608  # 1024x1024: 4096 image tokens (16x16 pixels each) and at least 512 of text

    @classmethod
    def describe(cls, config: Flux2Config) -> str:
        variant = "dev" if config.guidance else "klein"
        return (f"FLUX.2 [{variant}] ({config.depth_double} double + {config.depth_single} single blocks, "
                f"hidden {config.hidden_size})")

    @classmethod
    def shapes(cls, config: Flux2Config) -> Shapes:
        """In the order of ComfyUI's ``Flux`` state_dict (the shared modulations come last)."""
        h, m = config.hidden_size, config.mlp_hidden
        shapes: Shapes = {}
        linear(shapes, "img_in", config.in_channels, h, bias=False)
        for embedder in ("time_in",) + ("guidance_in",) * config.guidance:
            linear(shapes, f"{embedder}.in_layer", 256, h, bias=False)
            linear(shapes, f"{embedder}.out_layer", h, h, bias=False)
        linear(shapes, "txt_in", config.context_in_dim, h, bias=False)
        stream_blocks(shapes, config.depth_double, config.depth_single, h, config.head_dim, 2 * m, m,
                      modulation=False, bias=False)
        linear(shapes, "final_layer.linear", h, config.in_channels, bias=False)
        linear(shapes, "final_layer.adaLN_modulation.1", h, 2 * h, bias=False)
        linear(shapes, "double_stream_modulation_img.lin", h, 6 * h, bias=False)
        linear(shapes, "double_stream_modulation_txt.lin", h, 6 * h, bias=False)
        linear(shapes, "single_stream_modulation.lin", h, 3 * h, bias=False)
        return shapes

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> Flux2Config:
        hidden, in_channels = need(keys, "img_in.weight", cls.title)
        head_dim = read_head_dim(keys, hidden, cls.title)
        config = Flux2Config(
            hidden_size=hidden, heads=hidden // head_dim,
            depth_double=count_blocks(keys, "double_blocks", cls.title),
            depth_single=count_blocks(keys, "single_blocks", cls.title),
            context_in_dim=need(keys, "txt_in.weight", cls.title)[1],
            mlp_hidden=need(keys, "double_blocks.0.img_mlp.2.weight", cls.title)[1], in_channels=in_channels,
            guidance="guidance_in.in_layer.weight" in keys)
        return config
