"""Qwen-Image and Qwen-Image-Edit (2509 and 2511 share the layout), in the ComfyUI/diffusers layout.

Source: QwenLM's Qwen-Image, as diffusers' ``transformer_qwenimage.py`` and ComfyUI's
``comfy/ldm/qwen_image/model.py`` (``QwenImageTransformer2DModel``) implement it; both use the
same tensor names, so the single-file ComfyUI checkpoint is the merged diffusers one. ComfyUI's
``model_detection.py`` recognizes it by ``txt_norm.weight`` (``image_model = "qwen_image"``) and
reads only ``in_channels`` (``img_in.weight.shape[1]``) and ``num_layers`` (counted
``transformer_blocks``); the widths (hidden 3072, 24 heads of 128, Qwen2.5-VL's 3584, 16 output
channels, MLP 4x) are the class defaults. ComfyUI-GGUF loads it as ``general.architecture =
qwen_image``; its converter (``ModelQwenImage``, branch auto_convert) keeps nothing beyond the
common rules, and its llama.cpp patch only raises the types of blocks 0 and 59.

Blocks: 60 dual-stream ``transformer_blocks`` (image and text streams, joint attention), each
``img_mod``/``txt_mod`` (adaLN), ``attn`` (to_q/k/v, add_q/k/v_proj, to_out.0, to_add_out) and
``img_mlp``/``txt_mlp``. Every 2-D tensor in a block is an ``operations.Linear`` weight (the
RMSNorms of q/k are 1-D), so nothing in a block needs keeping F32 beyond the common rules. Outside
the blocks (all F32): ``time_text_embed``, ``txt_norm``, ``img_in``, ``txt_in``, ``norm_out``,
``proj_out``.

Variants this module refuses: Qwen-Image-Layered (``time_text_embed.addition_t_embedding``), which
this ComfyUI cannot build. Qwen-Image-Edit-2511's ``__index_timestep_zero__`` is an empty marker
outside the model's state dict; it is no tensor of this layout.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .family import ArchitectureError, BlockGroup, Family, Shapes, count_blocks, linear, need

# A token packs 2x2 latent pixels: img_in reads 4x the latent channels, proj_out writes 4x.
PATCH_VALUES = 4
TIMESTEP_CHANNELS = 256  # sinusoidal timestep features into time_text_embed
LAYERED_KEY = "time_text_embed.addition_t_embedding.weight"


@dataclass(frozen=True)
class QwenImageConfig:
    """Qwen-Image's dimensions; the defaults are Qwen-Image's (and Qwen-Image-Edit's)."""

    hidden_size: int = 3072
    heads: int = 24
    depth: int = 60
    context_in_dim: int = 3584  # Qwen2.5-VL-7B's width
    in_channels: int = 64  # img_in's input: 16 latent channels x 2x2 patch (ComfyUI's in_channels)
    out_channels: int = 16  # latent channels proj_out writes, per 2x2 patch
    mlp_hidden: int = 12288

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads


# Qwen-Image and Qwen-Image-Edit: one transformer, so one config object under both names.
QWEN_IMAGE = QwenImageConfig()



def _block(shapes: Shapes, b: str, config: QwenImageConfig) -> None:
    """One transformer block's tensors, in ComfyUI's module order."""
    h, m = config.hidden_size, config.mlp_hidden
    for stream in ("img", "txt"):
        linear(shapes, f"{b}.{stream}_mod.1", h, 6 * h)
        linear(shapes, f"{b}.{stream}_mlp.net.0.proj", h, m)
        linear(shapes, f"{b}.{stream}_mlp.net.2", m, h)
    for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        shapes[f"{b}.attn.{norm}.weight"] = (config.head_dim,)
    for projection in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
        linear(shapes, f"{b}.attn.{projection}", h, h)


class QwenImage(Family):
    name = "qwen_image"
    title = "Qwen-Image"
    gguf_arch = "qwen_image"
    groups = (BlockGroup("blocks", "transformer_blocks", "depth"),)
    final_layer = "norm_out"
    recognized_by = ("txt_norm.weight", "img_in.weight", "txt_in.weight", "transformer_blocks.0.img_mod.1.weight",
                     "transformer_blocks.0.img_mlp.net.0.proj.weight")
    identity_keys = ("img_in.weight", "transformer_blocks.0.attn.to_q.weight", "proj_out.weight")
    Config = QwenImageConfig
    configs = {
        # Qwen/Qwen-Image transformer/config.json: 60 layers, 24 heads x 128, joint_attention_dim 3584.
        "qwen-image": QWEN_IMAGE,
        # Qwen/Qwen-Image-Edit (and -2509, -2511) transformer/config.json: the same transformer, same tensors.
        "qwen-image-edit": QWEN_IMAGE,
    }
    # ComfyUI's detection hard-codes every width, so a checkpoint it loads unaided keeps them: 2 full-width
    # blocks (0.72 B parameters), the least that still mixes types over blocks.
    tiny = QwenImageConfig(depth=2)
    reference_tokens = 4352  # 1024x1024: 4096 image tokens and 256 of Qwen2.5-VL text

    @classmethod
    def describe(cls, config: QwenImageConfig) -> str:
        return f"Qwen-Image ({config.depth} blocks, hidden {config.hidden_size})"

    @classmethod
    def shapes(cls, config: QwenImageConfig) -> Shapes:
        h = config.hidden_size
        shapes: Shapes = {}
        linear(shapes, "time_text_embed.timestep_embedder.linear_1", TIMESTEP_CHANNELS, h)
        linear(shapes, "time_text_embed.timestep_embedder.linear_2", h, h)
        shapes["txt_norm.weight"] = (config.context_in_dim,)
        linear(shapes, "img_in", config.in_channels, h)
        linear(shapes, "txt_in", config.context_in_dim, h)
        for i in range(config.depth):
            _block(shapes, f"transformer_blocks.{i}", config)
        linear(shapes, "norm_out.linear", h, 2 * h)
        linear(shapes, "proj_out", h, PATCH_VALUES * config.out_channels)
        return shapes

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> QwenImageConfig:
        if LAYERED_KEY in keys:
            raise ArchitectureError(f"Qwen-Image-Layered ({LAYERED_KEY}) is not supported: "
                                    f"this ComfyUI has no Qwen-Image model with it")
        hidden, in_channels = need(keys, "img_in.weight", cls.title)
        head_key = "transformer_blocks.0.attn.norm_q.weight"
        head_dim = need(keys, head_key, cls.title)[0]
        if hidden % head_dim:
            raise ArchitectureError(f"{head_key} has shape {keys[head_key]}, expected (head size,) dividing {hidden}")
        context_in_dim = need(keys, "txt_norm.weight", cls.title)[0]
        expected = {"txt_in.weight": (hidden, context_in_dim),
                    "transformer_blocks.0.attn.to_q.weight": (hidden, hidden),
                    "transformer_blocks.0.img_mod.1.weight": (6 * hidden, hidden)}
        for key, shape in expected.items():
            if need(keys, key, cls.title) != shape:
                raise ArchitectureError(f"{key} has shape {keys[key]}, expected {shape} for hidden size {hidden}")
        patch_outputs = need(keys, "proj_out.weight", cls.title)[0]
        if patch_outputs % PATCH_VALUES:
            raise ArchitectureError(f"proj_out.weight has {patch_outputs} rows, not {PATCH_VALUES} per channel")
        return QwenImageConfig(
            hidden_size=hidden, heads=hidden // head_dim, depth=count_blocks(keys, "transformer_blocks", cls.title),
            context_in_dim=context_in_dim, in_channels=in_channels, out_channels=patch_outputs // PATCH_VALUES,
            mlp_hidden=need(keys, "transformer_blocks.0.img_mlp.net.0.proj.weight", cls.title)[0])
