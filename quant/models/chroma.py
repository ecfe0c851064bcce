"""Chroma (lodestones' Chroma1-HD, Chroma1-Base, Chroma v4x): FLUX.1 [schnell] re-trained with its
per-block modulations computed by one shared MLP, in the BFL/ComfyUI single-file layout.

Sources: lodestones' model cards (huggingface.co/lodestones/Chroma1-HD, lodestones/Chroma: 8.9 B
parameters) and their reference code (github.com/lodestone-rock/flow, ``src/models/chroma``), as
ComfyUI implements it in ``comfy/ldm/chroma/model.py`` and ``layers.py`` (``Chroma``,
``Approximator``, ``DoubleStreamBlock``, ``SingleStreamBlock``, ``LastLayer``). The blocks are
FLUX.1's without their modulation Linears (``img_mod``/``txt_mod``/``modulation``) and
``final_layer.adaLN_modulation``; FLUX.1's ``time_in``/``vector_in``/``guidance_in`` are gone too.
Instead ``distilled_guidance_layer`` (the "approximator": in_proj, 5 residual MLPs with RMSNorms,
out_proj) maps (timestep, guidance, index) embeddings to the 344 shift/scale/gate vectors every
block and the final layer read. ComfyUI's ``model_detection.py`` recognizes it by
``double_blocks.0.img_attn.norm.key_norm.scale`` plus ``distilled_guidance_layer.norms.0.scale``
(image_model "chroma"), counts ``double_blocks`` / ``single_blocks``, and hard-codes every width
(hidden 3072, 24 heads, context 4096, MLP ratio 4, approximator 64 -> 5120 x 5 -> 3072).
ComfyUI-GGUF's converter takes it for its ``flux`` template (``double_blocks.0.img_attn.proj.weight``)
and keeps only 1-D and small tensors; its loader accepts ``general.architecture = flux`` and leaves the
choice of model class to ComfyUI's detection, which picks Chroma.

Chroma Radiance (pixel space: ``nerf_blocks``, ``img_in_patch`` instead of ``img_in``) is not read.

Blocks: 19 double-stream then 38 single-stream blocks (57), run in that order. Every 2-D tensor in a
block is an ordinary Linear weight, so nothing in blocks needs keeping F32 beyond the common rules;
``distilled_guidance_layer`` (278 M parameters) lies outside the blocks and so stays F32, as do
``img_in``, ``txt_in`` and ``final_layer``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .family import ArchitectureError, BlockGroup, Family, Shapes, count_blocks, linear, need
from .flux1 import read_head_dim, stream_blocks

APPROXIMATOR = "distilled_guidance_layer"


@dataclass(frozen=True)
class ChromaConfig:
    """Chroma's dimensions; the defaults are Chroma1-HD's (all released Chroma checkpoints share them)."""

    hidden_size: int = 3072
    heads: int = 24
    depth_double: int = 19
    depth_single: int = 38
    context_in_dim: int = 4096  # T5-XXL's width
    mlp_hidden: int = 12288
    in_channels: int = 16  # latent channels; a token packs 2x2 of them
    approximator_in_dim: int = 64  # 16 timestep + 16 guidance + 32 index embedding values
    approximator_hidden: int = 5120
    approximator_layers: int = 5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads


class Chroma(Family):
    name = "chroma"
    title = "Chroma"
    gguf_arch = "flux"  # ComfyUI-GGUF has no Chroma arch; ComfyUI's detection tells it from FLUX.1
    groups = (BlockGroup("double", "double_blocks", "depth_double"),
              BlockGroup("single", "single_blocks", "depth_single"))
    # FLUX.1 requires time_in/vector_in, which Chroma lacks; Radiance lacks img_in.weight.
    recognized_by = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", f"{APPROXIMATOR}.in_proj.weight",
                     f"{APPROXIMATOR}.norms.0.scale")
    not_with = ("nerf_blocks.0.norm.scale",)  # Chroma Radiance
    identity_keys = ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", f"{APPROXIMATOR}.in_proj.weight")
    Config = ChromaConfig
    configs = {
        # huggingface.co/lodestones/Chroma1-HD (also Chroma1-Base and lodestones/Chroma v4x).
        "chroma": ChromaConfig(),
    }
    # ComfyUI's detection reads only the depths (widths are hard-coded), so the tiny model keeps every
    # width and has one block per group: 631 M parameters, 278 M of them in the approximator.
    tiny = ChromaConfig(depth_double=1, depth_single=1)
    reference_tokens = 4608  # 1024x1024: 4096 image tokens and 512 of T5 text, as FLUX.1

    @classmethod
    def describe(cls, config: ChromaConfig) -> str:
        return (f"Chroma ({config.depth_double} double + {config.depth_single} single blocks, "
                f"hidden {config.hidden_size})")

    @classmethod
    def shapes(cls, config: ChromaConfig) -> Shapes:
        h, m, a = config.hidden_size, config.mlp_hidden, config.approximator_hidden
        shapes: Shapes = {}
        linear(shapes, "img_in", config.in_channels * 4, h)
        linear(shapes, "txt_in", config.context_in_dim, h)
        linear(shapes, f"{APPROXIMATOR}.in_proj", config.approximator_in_dim, a)
        for i in range(config.approximator_layers):
            linear(shapes, f"{APPROXIMATOR}.layers.{i}.in_layer", a, a)
            linear(shapes, f"{APPROXIMATOR}.layers.{i}.out_layer", a, a)
        for i in range(config.approximator_layers):
            shapes[f"{APPROXIMATOR}.norms.{i}.scale"] = (a,)
        linear(shapes, f"{APPROXIMATOR}.out_proj", a, h)
        stream_blocks(shapes, config.depth_double, config.depth_single, h, config.head_dim, m, m, modulation=False)
        linear(shapes, "final_layer.linear", h, 4 * config.in_channels)
        return shapes

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> ChromaConfig:
        hidden, patch_values = need(keys, "img_in.weight", cls.title)
        head_dim = read_head_dim(keys, hidden, cls.title)
        approximator_hidden, approximator_in = need(keys, f"{APPROXIMATOR}.in_proj.weight", cls.title)
        out_proj = need(keys, f"{APPROXIMATOR}.out_proj.weight", cls.title)
        if out_proj != (hidden, approximator_hidden):
            raise ArchitectureError(f"{APPROXIMATOR}.out_proj.weight has shape {out_proj}, "
                                    f"expected {(hidden, approximator_hidden)}")
        need(keys, "final_layer.linear.weight", cls.title)
        return ChromaConfig(
            hidden_size=hidden, heads=hidden // head_dim,
            depth_double=count_blocks(keys, "double_blocks", cls.title),
            depth_single=count_blocks(keys, "single_blocks", cls.title),
            context_in_dim=need(keys, "txt_in.weight", cls.title)[1],
            mlp_hidden=need(keys, "double_blocks.0.img_mlp.0.weight", cls.title)[0], in_channels=patch_values // 4,
            approximator_in_dim=approximator_in, approximator_hidden=approximator_hidden,
            approximator_layers=count_blocks(keys, f"{APPROXIMATOR}.layers", cls.title))
