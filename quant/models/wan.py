"""Wan 2.1 and Wan 2.2 (text/image-to-video) in the Wan/ComfyUI single-file layout.

Sources: the Wan team's reference ``wan/modules/model.py`` (github.com/Wan-Video/Wan2.1 and Wan2.2:
``WanModel``, ``WanAttentionBlock``, ``Head``, ``MLPProj``) and its configs (``wan/configs/wan_*.py``:
dim, ffn_dim, num_heads, num_layers per model), as ComfyUI implements it in ``comfy/ldm/wan/model.py``
(``WanModel``). ComfyUI's ``model_detection.py`` recognizes it by ``head.modulation`` (image_model
"wan2.1" for every Wan, 2.2 included), reads dim, out_dim, ffn_dim, in_dim and the block count from
the shapes and hard-codes the rest (heads = dim / 128, patch (1, 2, 2), freq_dim 256, qk and
cross-attention norms; ``WanModel``'s defaults fix the text width, 4096, and the CLIP-vision width,
1280). ``supported_models.py`` then picks WAN22_T2V for out_dim 48 (the 5B, Wan 2.2 VAE latents),
WAN21_I2V for ``img_emb`` with in_dim 36, WAN21_T2V otherwise (Wan 2.2 I2V-A14B included: in_dim 36,
the image arriving only as concatenated latents). ComfyUI-GGUF's converter (``tools/convert.py``,
``ModelWan``) writes ``general.architecture = wan`` and keeps ``.modulation`` F32; its 5-D
``patch_embedding.weight`` goes through its ``fix_5d_tensors`` step (GGUF tensors in gguf-py may
have 5 dimensions, ggml's C code not).

Read: Wan 2.1 T2V 14B and 1.3B, Wan 2.1 I2V 14B and FLF2V 14B (``img_emb``: the CLIP-vision
projection, and ``k_img``/``v_img`` in every cross-attention), Wan 2.2 T2V-A14B and I2V-A14B (each
expert, high- and low-noise, is its own 14B checkpoint) and TI2V-5B. Refused, naming what was
found: VACE, camera control, S2V, HuMo, Animate and Fun reference-image checkpoints (more modules
than ``WanModel`` has), and any tensor this family's shapes do not explain.

Blocks: ``blocks.0..N-1`` (40 for 14B, 30 for 1.3B and 5B), each self-attention, cross-attention
(to the umT5 text, plus the CLIP image tokens for Wan 2.1 I2V) and a GELU MLP. Every 2-D tensor in
a block is a Linear weight; the block's ``modulation`` is an ``nn.Parameter`` (1, 6, dim) added to the
time embedding directly, which ComfyUI-GGUF cannot dequantize on the fly, so it stays F32 (being
3-D it is never quantized anyway; named for clarity and to match the converter). Outside the
blocks everything stays F32: ``patch_embedding`` (a Conv3d ComfyUI builds in float32), the text and
time embeddings, ``head`` (``head.modulation`` is another direct Parameter), ``img_emb``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .family import ArchitectureError, BlockGroup, Family, Shapes, count_blocks, linear, need

# Head size of every Wan model; ComfyUI's detection assumes it (heads = dim / 128).
WAN_HEAD_DIM = 128
# Latent frames x rows x columns per token; ComfyUI hard-codes it.
PATCH = (1, 2, 2)
# CLIP ViT-H/14's width: what ``img_emb`` projects from (ComfyUI hard-codes it).
CLIP_VISION_WIDTH = 1280
# Modules of WanModel-based variants this family does not read, by a key that shows them
# (ComfyUI's detection tells them apart by the same keys).
_VARIANTS = (
    ("vace_patch_embedding.weight", "Wan VACE"),
    ("control_adapter.conv.weight", "Wan camera control"),
    ("casual_audio_encoder.encoder.final_linear.weight", "Wan 2.2 S2V"),
    ("audio_proj.audio_proj_glob_1.layer.bias", "HuMo"),
    ("face_adapter.fuser_blocks.0.k_norm.weight", "Wan 2.2 Animate"),
    ("ref_conv.weight", "Wan Fun with a reference-image input"),
)


@dataclass(frozen=True)
class WanConfig:
    """Wan's dimensions; the defaults are the 14B T2V model's (Wan 2.1 T2V-14B, each Wan 2.2 T2V-A14B expert)."""

    dim: int = 5120
    ffn_dim: int = 13824
    depth: int = 40
    in_dim: int = 16  # latent channels in; I2V adds 4 mask + 16 image-latent channels (36)
    out_dim: int = 16  # latent channels out: 16 (Wan 2.1 VAE) or 48 (Wan 2.2 VAE)
    text_dim: int = 4096  # umT5-XXL's width
    freq_dim: int = 256  # sinusoidal timestep embedding
    clip_image: bool = False  # Wan 2.1 I2V/FLF2V: img_emb and k_img/v_img attend to CLIP-vision tokens
    flf_tokens: int = 0  # Wan 2.1 FLF2V: img_emb.emb_pos, the first and last frames' 2 x 257 CLIP tokens

    @property
    def heads(self) -> int:
        return self.dim // WAN_HEAD_DIM

    @property
    def head_dim(self) -> int:
        return WAN_HEAD_DIM


class Wan(Family):
    name = "wan"
    title = "Wan 2.1/2.2"
    gguf_arch = "wan"
    groups = (BlockGroup("blocks", "blocks", "depth"),)
    final_layer = "head"
    recognized_by = ("head.modulation", "patch_embedding.weight", "text_embedding.2.weight",
                     "blocks.0.self_attn.norm_q.weight")
    kept_in_blocks = (".modulation",)
    identity_keys = ("patch_embedding.weight", "blocks.0.self_attn.q.weight", "head.head.weight")
    Config = WanConfig
    configs = {
        # github.com/Wan-Video/Wan2.1 wan/configs/wan_t2v_14B.py; huggingface.co/Wan-AI/Wan2.1-T2V-14B
        "wan2.1-t2v-14b": WanConfig(),
        # wan/configs/wan_t2v_1_3B.py; huggingface.co/Wan-AI/Wan2.1-T2V-1.3B
        "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, depth=30),
        # wan/configs/wan_i2v_14B.py; huggingface.co/Wan-AI/Wan2.1-I2V-14B-480P and -720P
        "wan2.1-i2v-14b": WanConfig(in_dim=36, clip_image=True),
        # huggingface.co/Wan-AI/Wan2.1-FLF2V-14B-720P (the I2V model with emb_pos for two images)
        "wan2.1-flf2v-14b": WanConfig(in_dim=36, clip_image=True, flf_tokens=2 * 257),
        # github.com/Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py; Wan-AI/Wan2.2-T2V-A14B, either expert
        "wan2.2-14b": WanConfig(),
        # wan/configs/wan_i2v_A14B.py (no CLIP); Wan-AI/Wan2.2-I2V-A14B, either expert
        "wan2.2-i2v-14b": WanConfig(in_dim=36),
        # wan/configs/wan_ti2v_5B.py; huggingface.co/Wan-AI/Wan2.2-TI2V-5B
        "wan2.2-5b": WanConfig(dim=3072, ffn_dim=14336, depth=30, in_dim=48, out_dim=48),
    }
    # Shrinks only what ComfyUI's detection reads (dim, ffn_dim, depth); keeps head size 128, text
    # width 4096 and freq_dim 256, which it assumes. About 6 M parameters.
    tiny = WanConfig(dim=256, ffn_dim=1024, depth=4)
    reference_tokens = 32760  # 81 frames at 832x480: 21 latent frames of 30x52 tokens

    @classmethod
    def describe(cls, config: WanConfig) -> str:
        if config.out_dim == 48:
            kind = "TI2V"
        else:
            kind = "T2V" if config.in_dim == config.out_dim else "I2V"
        if config.clip_image:
            kind += " with CLIP-vision context" + (" (first-last frame)" if config.flf_tokens else "")
        return f"Wan {kind} ({config.depth} blocks, dim {config.dim}, {config.in_dim} latent channels in)"

    @classmethod
    def shapes(cls, config: WanConfig) -> Shapes:
        d = config.dim
        shapes: Shapes = {"patch_embedding.weight": (d, config.in_dim, *PATCH), "patch_embedding.bias": (d,)}
        linear(shapes, "text_embedding.0", config.text_dim, d)
        linear(shapes, "text_embedding.2", d, d)
        linear(shapes, "time_embedding.0", config.freq_dim, d)
        linear(shapes, "time_embedding.2", d, d)
        linear(shapes, "time_projection.1", d, 6 * d)
        for i in range(config.depth):
            _block(shapes, f"blocks.{i}", config)
        shapes["head.modulation"] = (1, 2, d)
        linear(shapes, "head.head", d, math.prod(PATCH) * config.out_dim)
        if config.clip_image:
            if config.flf_tokens:
                shapes["img_emb.emb_pos"] = (1, config.flf_tokens, CLIP_VISION_WIDTH)
            shapes["img_emb.proj.0.weight"] = shapes["img_emb.proj.0.bias"] = (CLIP_VISION_WIDTH,)
            linear(shapes, "img_emb.proj.1", CLIP_VISION_WIDTH, CLIP_VISION_WIDTH)
            linear(shapes, "img_emb.proj.3", CLIP_VISION_WIDTH, d)
            shapes["img_emb.proj.4.weight"] = shapes["img_emb.proj.4.bias"] = (d,)
        return shapes

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> WanConfig:
        for marker, variant in _VARIANTS:
            if marker in keys:
                raise ArchitectureError(f"this is a {variant} checkpoint (found {marker}); only the plain "
                                        f"{cls.title} text/image-to-video models are supported")
        patch = need(keys, "patch_embedding.weight", cls.title)
        if len(patch) != 5 or patch[2:] != PATCH or patch[0] % WAN_HEAD_DIM:
            raise ArchitectureError(f"patch_embedding.weight has shape {patch}, expected (dim, in_dim, {PATCH}) "
                                    f"with dim a multiple of {WAN_HEAD_DIM}")
        dim, in_dim = patch[:2]
        config = WanConfig(
            dim=dim, ffn_dim=need(keys, "blocks.0.ffn.0.weight", cls.title)[0],
            depth=count_blocks(keys, "blocks", cls.title), in_dim=in_dim,
            out_dim=need(keys, "head.head.weight", cls.title)[0] // math.prod(PATCH),
            text_dim=need(keys, "text_embedding.0.weight", cls.title)[1],
            freq_dim=need(keys, "time_embedding.0.weight", cls.title)[1],
            clip_image="img_emb.proj.1.weight" in keys, flf_tokens=keys.get("img_emb.emb_pos", (1, 0))[1])
        return config


def _attention(shapes: Shapes, name: str, dim: int, kv_dim: int) -> None:
    for projection, n_in in (("q", dim), ("k", kv_dim), ("v", kv_dim), ("o", dim)):
        linear(shapes, f"{name}.{projection}", n_in, dim)
    shapes[f"{name}.norm_q.weight"] = shapes[f"{name}.norm_k.weight"] = (dim,)


def _block(shapes: Shapes, b: str, config: WanConfig) -> None:
    """One WanAttentionBlock, in ComfyUI's state_dict order (its own Parameter first)."""
    d = config.dim
    shapes[f"{b}.modulation"] = (1, 6, d)
    _attention(shapes, f"{b}.self_attn", d, d)
    shapes[f"{b}.norm3.weight"] = shapes[f"{b}.norm3.bias"] = (d,)
    _attention(shapes, f"{b}.cross_attn", d, d)  # the text context is already projected to dim
    if config.clip_image:
        linear(shapes, f"{b}.cross_attn.k_img", d, d)
        linear(shapes, f"{b}.cross_attn.v_img", d, d)
        shapes[f"{b}.cross_attn.norm_k_img.weight"] = (d,)
    linear(shapes, f"{b}.ffn.0", d, config.ffn_dim)
    linear(shapes, f"{b}.ffn.2", config.ffn_dim, d)

