"""NextDiT, the single-stream DiT of Lumina-Image 2.0 and Z-Image: what both families share.

Source: ComfyUI's ``comfy/ldm/lumina/model.py`` (``NextDiT``, ``JointTransformerBlock``,
``JointAttention``, ``FeedForward``, ``FinalLayer``), after Alpha-VLLM's Lumina-Image-2.0
``models/model.py``. Its forward runs three groups of identical blocks in this order:
``context_refiner`` (text tokens alone, no modulation), ``noise_refiner`` (image tokens alone,
modulated by the timestep), then ``layers`` over the joined text + image sequence (modulated).
``context_refiner`` and ``noise_refiner`` have the same depth (ComfyUI's ``n_refiner_layers``).
(Tongyi's Z-Image reference runs the two refiners the other way round; they read disjoint
tokens, so the order is ComfyUI's choice, and ComfyUI is where the pack runs blocks.)

A block holds a fused ``attention.qkv`` (grouped-query: ``heads`` query heads, ``kv_heads``
key/value heads, no bias), ``attention.out``, RMSNorm ``q_norm``/``k_norm`` over a head, a SwiGLU
``feed_forward`` (``w1``, ``w2``, ``w3``, no bias), four RMSNorms, and in modulated blocks an
``adaLN_modulation`` Linear to 4 x dim. Every 2-D tensor in a block is an ``operations.Linear``
weight, which ComfyUI-GGUF dequantizes on the fly, so no block tensor needs keeping F32.
The families differ in the modulation width and the Sequential index of its Linear, in the
timestep embedder's output, and in a few tensors outside blocks (each module says which).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from .family import ArchitectureError, BlockGroup, Shapes, count_blocks, linear, need

# Both families patchify 2x2 (ComfyUI's detection hard-codes patch_size 2).
PATCH_SIZE = 2
# The sinusoidal timestep features the timestep embedder reads (ComfyUI's TimestepEmbedder).
TIMESTEP_FEATURES = 256
# The timestep embedder's hidden width is min(dim, this) in both families.
TIMESTEP_HIDDEN = 1024


@dataclass(frozen=True)
class NextDiTConfig:
    """NextDiT's dimensions; each family's Config subclasses it with its main model's defaults."""

    dim: int
    heads: int
    kv_heads: int
    depth: int  # blocks in ``layers``
    refiner_depth: int  # blocks in ``context_refiner``, and as many in ``noise_refiner``
    cap_feat_dim: int  # the text encoder's width
    ffn_hidden: int
    in_channels: int  # latent channels; a token packs 2x2 of them

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads



class NextDiTFamily:
    """Shapes, config reading and depths common to NextDiT families; a family mixes it in
    before ``Family`` and sets the two modulation facts."""

    title: ClassVar[str]
    groups = (BlockGroup("context_refiner", "context_refiner", "refiner_depth"),
              BlockGroup("noise_refiner", "noise_refiner", "refiner_depth"), BlockGroup("layers", "layers", "depth"))
    modulation_width: ClassVar[int]  # the timestep vector that modulates blocks is min(dim, this) wide
    modulation_index: ClassVar[int]  # the Linear's index in a block's adaLN_modulation Sequential

    @classmethod
    def describe(cls, config: NextDiTConfig) -> str:
        return (f"{cls.title} ({config.refiner_depth} context_refiner + {config.refiner_depth} noise_refiner + "
                f"{config.depth} layers blocks, dim {config.dim})")

    @classmethod
    def modulation(cls, config: NextDiTConfig) -> int:
        return min(config.dim, cls.modulation_width)

    @classmethod
    def trunk_shapes(cls, config: NextDiTConfig) -> Shapes:
        """Everything from ``x_embedder`` to the last of ``layers``, in ComfyUI's module order."""
        shapes: Shapes = {}
        linear(shapes, "x_embedder", PATCH_SIZE * PATCH_SIZE * config.in_channels, config.dim)
        for i in range(config.refiner_depth):
            cls._block(shapes, f"noise_refiner.{i}", config, modulated=True)
        for i in range(config.refiner_depth):
            cls._block(shapes, f"context_refiner.{i}", config, modulated=False)
        hidden = min(config.dim, TIMESTEP_HIDDEN)
        linear(shapes, "t_embedder.mlp.0", TIMESTEP_FEATURES, hidden)
        linear(shapes, "t_embedder.mlp.2", hidden, cls.modulation(config))
        shapes["cap_embedder.0.weight"] = (config.cap_feat_dim,)
        linear(shapes, "cap_embedder.1", config.cap_feat_dim, config.dim)
        for i in range(config.depth):
            cls._block(shapes, f"layers.{i}", config, modulated=True)
        return shapes

    @classmethod
    def final_layer_shapes(cls, config: NextDiTConfig) -> Shapes:
        """The output head (its LayerNorm has no weights)."""
        shapes: Shapes = {}
        linear(shapes, "final_layer.linear", config.dim, PATCH_SIZE * PATCH_SIZE * config.in_channels)
        linear(shapes, "final_layer.adaLN_modulation.1", cls.modulation(config), config.dim)
        return shapes

    @classmethod
    def _block(cls, shapes: Shapes, block: str, config: NextDiTConfig, modulated: bool) -> None:
        dim, head_dim = config.dim, config.head_dim
        linear(shapes, f"{block}.attention.qkv", dim, (config.heads + 2 * config.kv_heads) * head_dim, bias=False)
        linear(shapes, f"{block}.attention.out", config.heads * head_dim, dim, bias=False)
        shapes[f"{block}.attention.q_norm.weight"] = (head_dim,)
        shapes[f"{block}.attention.k_norm.weight"] = (head_dim,)
        linear(shapes, f"{block}.feed_forward.w1", dim, config.ffn_hidden, bias=False)
        linear(shapes, f"{block}.feed_forward.w2", config.ffn_hidden, dim, bias=False)
        linear(shapes, f"{block}.feed_forward.w3", dim, config.ffn_hidden, bias=False)
        for norm in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            shapes[f"{block}.{norm}.weight"] = (dim,)
        if modulated:
            linear(shapes, f"{block}.adaLN_modulation.{cls.modulation_index}", cls.modulation(config), 4 * dim)

    @classmethod
    def read_trunk(cls, keys: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """The NextDiTConfig fields a checkpoint's shapes imply; ArchitectureError naming an odd tensor."""
        dim, cap_feat_dim = need(keys, "cap_embedder.1.weight", cls.title)
        x_out, patch_values = need(keys, "x_embedder.weight", cls.title)
        if x_out != dim or patch_values % (PATCH_SIZE * PATCH_SIZE):
            raise ArchitectureError(f"x_embedder.weight has shape {(x_out, patch_values)}, expected "
                                    f"({dim}, {PATCH_SIZE * PATCH_SIZE} x latent channels)")
        head_key = "layers.0.attention.q_norm.weight"
        head_dim = need(keys, head_key, cls.title)[0]
        if dim % head_dim:
            raise ArchitectureError(f"{head_key} has shape {keys[head_key]}, expected (head size,) dividing {dim}")
        qkv_out = need(keys, "layers.0.attention.qkv.weight", cls.title)[0]
        kv_values = qkv_out - dim
        if kv_values <= 0 or kv_values % (2 * head_dim):
            raise ArchitectureError(f"layers.0.attention.qkv.weight has {qkv_out} rows, expected {dim} + 2 x "
                                    f"key/value heads x {head_dim}")
        mod_key = f"layers.0.adaLN_modulation.{cls.modulation_index}.weight"
        expected_mod = (4 * dim, min(dim, cls.modulation_width))
        if need(keys, mod_key, cls.title) != expected_mod:
            raise ArchitectureError(f"{mod_key} has shape {keys[mod_key]}, expected {expected_mod} for {cls.title}")
        refiner_depth = count_blocks(keys, "noise_refiner", cls.title)
        context_depth = count_blocks(keys, "context_refiner", cls.title)
        if context_depth != refiner_depth:
            raise ArchitectureError(f"{cls.title} checkpoint has {context_depth} context_refiner blocks but "
                                    f"{refiner_depth} noise_refiner blocks; NextDiT builds as many of each")
        return dict(dim=dim, heads=dim // head_dim, kv_heads=kv_values // (2 * head_dim),
                    depth=count_blocks(keys, "layers", cls.title), refiner_depth=refiner_depth,
                    cap_feat_dim=cap_feat_dim, ffn_hidden=need(keys, "layers.0.feed_forward.w1.weight", cls.title)[0],
                    in_channels=patch_values // (PATCH_SIZE * PATCH_SIZE))
