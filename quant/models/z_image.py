"""Z-Image and Z-Image-Turbo (Tongyi-MAI), 6 B, in ComfyUI's layout.

Sources: Tongyi-MAI/Z-Image ``src/zimage/transformer.py`` (commit 55be6c2a; ``ZImageTransformer2DModel``:
dim 3840, 30 layers, 2 refiner blocks each, 30 heads, no grouped-query attention, feed-forward
int(dim / 3 * 8) = 10240, adaLN from a 256-wide timestep vector, Qwen3-4B captions of width 2560,
learned ``x_pad_token`` / ``cap_pad_token`` filling the sequences to a multiple of 32). The ComfyUI of
this pack (a125cd84, Oct 2025) predates it; newer ComfyUI implements it in the Lumina NextDiT
(Comfy-Org/ComfyUI ``comfy/ldm/lumina/model.py`` at 617048a5: ``z_image_modulation``, pad tokens,
``rope_theta`` 256, ``time_scale`` 1000) and detects it in ``comfy/model_detection.py`` (at 0b61ce5b)
as image_model ``lumina2`` with dim 3840 read from ``cap_embedder.1.weight`` (heads, axes and the
feed-forward multiplier 8/3 hard-coded for that width; ``pad_tokens_multiple`` 32 when
``cap_pad_token`` is present), then ``supported_models.ZImage``. ComfyUI fuses the diffusers
``to_q``/``to_k``/``to_v`` into ``attention.qkv`` (``comfy.utils.z_image_to_diffusers``); this module
reads that single-file layout (Comfy-Org's repackaged ``z_image_turbo_bf16.safetensors``). ComfyUI-GGUF
has no Z-Image entry: its ``lumina2`` one matches these keys, and community GGUFs
(jayn7/Z-Image-Turbo-GGUF) carry ``general.architecture = lumina2``.

Blocks, in forward order: 2 ``context_refiner``, 2 ``noise_refiner``, 30 ``layers``: 34. Modulation:
``adaLN_modulation.0`` (no SiLU before it) in blocks, ``final_layer.adaLN_modulation.1`` at the end.
Kept F32: everything outside blocks, among them the pad tokens (nn.Parameters that ComfyUI
concatenates directly, which ComfyUI-GGUF could not dequantize) and the blocks' 1-D norms; every 2-D
block tensor is a Linear weight and may be quantized. No top-level ``norm_final``.
Variants with more groups are other families: Z-Image-Omni (``siglip_embedder``, ``siglip_refiner``)
and the pixel-space decoder variant (``dec_net``); Ming-Image shares the widths but has no pad tokens.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .family import ArchitectureError, Family, Shapes, need
from .nextdit import NextDiTConfig, NextDiTFamily

PAD_TOKENS = ("x_pad_token", "cap_pad_token")


@dataclass(frozen=True)
class ZImageConfig(NextDiTConfig):
    """Z-Image's dimensions; the defaults are Z-Image(-Turbo)'s."""

    dim: int = 3840
    heads: int = 30
    kv_heads: int = 30
    depth: int = 30
    refiner_depth: int = 2
    cap_feat_dim: int = 2560  # Qwen3-4B's width
    ffn_hidden: int = 10240
    in_channels: int = 16


class ZImage(NextDiTFamily, Family):
    name = "z_image"
    title = "Z-Image"
    gguf_arch = "lumina2"
    recognized_by = ("cap_embedder.1.weight", "context_refiner.0.attention.qkv.weight",
                     "noise_refiner.0.adaLN_modulation.0.weight", *PAD_TOKENS)
    # Lumina 2's modulation; Z-Image-Omni's SigLIP branch; the pixel-space decoder variant.
    not_with = ("noise_refiner.0.adaLN_modulation.1.weight", "siglip_embedder.0.weight", "dec_net.cond_embed.weight")
    identity_keys = ("x_embedder.weight", "layers.0.attention.qkv.weight", "final_layer.linear.weight")
    modulation_width = 256
    modulation_index = 0
    Config = ZImageConfig
    configs = {
        # Tongyi-MAI/Z-Image-Turbo and Tongyi-MAI/Z-Image (transformer/config.json; src/zimage/transformer.py).
        "z-image": ZImageConfig(),
    }
    # No ComfyUI detects a Z-Image narrower than 3840 (newer ComfyUI keys its widths on it), so the
    # tiny config shrinks everything: head size 128 as in the full model, rows multiples of 256.
    tiny = ZImageConfig(dim=512, heads=4, kv_heads=4, depth=3, cap_feat_dim=256, ffn_hidden=1536)
    reference_tokens = 4352  # 1024x1024: 4096 image tokens and 256 of caption

    @classmethod
    def shapes(cls, config: ZImageConfig) -> Shapes:
        # The pad tokens are the model's own parameters, so ComfyUI's state_dict lists them first.
        pad_tokens: Shapes = {token: (1, config.dim) for token in PAD_TOKENS}
        return pad_tokens | cls.trunk_shapes(config) | cls.final_layer_shapes(config)

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> ZImageConfig:
        config = ZImageConfig(**cls.read_trunk(keys))
        for token in PAD_TOKENS:
            if need(keys, token, cls.title) != (1, config.dim):
                raise ArchitectureError(f"{token} has shape {keys[token]}, expected {(1, config.dim)}")
        return config
