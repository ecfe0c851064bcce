"""Lumina-Image 2.0 (Alpha-VLLM), and its finetunes Neta Lumina and NetaYume Lumina, in ComfyUI's layout.

Source: Alpha-VLLM's ``Lumina-Image-2.0/models/model.py`` (``NextDiT_2B_GQA_patch2_Adaln_Refiner``:
dim 2304, 26 layers, 24 heads, 8 key/value heads, Gemma-2-2B captions of width 2304), as ComfyUI
implements it in ``comfy/ldm/lumina/model.py`` (``NextDiT``; the shared block layout is in
``nextdit.py``). ComfyUI's ``model_detection.py`` (commit a125cd84) recognizes it by
``cap_embedder.1.weight`` as image_model ``lumina2``, reads only ``cap_feat_dim`` and the number of
``layers`` from the shapes and hard-codes the rest (dim 2304, 24 heads, 8 key/value heads, 2
refiner blocks per refiner, feed-forward 4 x dim, in_channels 16, patch 2). ComfyUI-GGUF's
converter names it ``lumina2`` (``cap_embedder.1.weight`` with ``context_refiner.0.attention.qkv.weight``)
and keeps nothing F32 beyond 1-D and small tensors.

Blocks, in forward order: 2 ``context_refiner`` (text only, unmodulated), 2 ``noise_refiner``
(image only), 26 ``layers`` (joint): 30. Modulation: ``adaLN_modulation.1`` (after a SiLU) from a
min(dim, 1024)-wide timestep vector. Kept F32: everything outside blocks (embedders, final layer,
the unused top-level ``norm_final``) and the blocks' 1-D norms; every 2-D block tensor is a Linear
weight and may be quantized. Checkpoints carry ``norm_final.weight``, which no forward uses (newer
ComfyUI drops the module); a checkpoint saved without it is read with ``norm_final=False``.
NewBie (a Lumina 2 with a pooled CLIP input, ``clip_text_pooled_proj``) is not this family: this
ComfyUI cannot load it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .family import Family, Shapes
from .nextdit import NextDiTConfig, NextDiTFamily


@dataclass(frozen=True)
class Lumina2Config(NextDiTConfig):
    """Lumina-Image 2.0's dimensions; the defaults are the released 2.6 B model's."""

    dim: int = 2304
    heads: int = 24
    kv_heads: int = 8
    depth: int = 26
    refiner_depth: int = 2
    cap_feat_dim: int = 2304  # Gemma-2-2B's width
    ffn_hidden: int = 9216  # 4 x dim
    in_channels: int = 16
    norm_final: bool = True  # the unused top-level RMSNorm the original code registers


class Lumina2(NextDiTFamily, Family):
    name = "lumina2"
    title = "Lumina-Image 2.0"
    gguf_arch = "lumina2"
    recognized_by = ("cap_embedder.1.weight", "context_refiner.0.attention.qkv.weight",
                     "noise_refiner.0.adaLN_modulation.1.weight")
    # Z-Image's pad tokens; NewBie's pooled-CLIP projection.
    not_with = ("x_pad_token", "cap_pad_token", "clip_text_pooled_proj.0.weight")
    identity_keys = ("x_embedder.weight", "layers.0.attention.qkv.weight", "final_layer.linear.weight")
    modulation_width = 1024
    modulation_index = 1
    Config = Lumina2Config
    configs = {
        # Alpha-VLLM/Lumina-Image-2.0 (models/model.py, NextDiT_2B_GQA_patch2_Adaln_Refiner); Neta Lumina
        # and NetaYume Lumina are finetunes of it with the same shapes.
        "lumina2": Lumina2Config(),
    }
    # ComfyUI's detection hard-codes every width and the refiner depth, so only the caption width and
    # the number of layers shrink: about 0.5 B parameters is as small as this ComfyUI loads.
    tiny = Lumina2Config(depth=2, cap_feat_dim=256)
    reference_tokens = 4352  # 1024x1024: 4096 image tokens and 256 of caption

    @classmethod
    def shapes(cls, config: Lumina2Config) -> Shapes:
        shapes = cls.trunk_shapes(config)
        if config.norm_final:
            shapes["norm_final.weight"] = (config.dim,)
        return shapes | cls.final_layer_shapes(config)

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> Lumina2Config:
        return Lumina2Config(**cls.read_trunk(keys), norm_final="norm_final.weight" in keys)
