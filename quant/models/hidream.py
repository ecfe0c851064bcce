"""HiDream-I1 (Full, Dev and Fast share the layout), in the HiDream/diffusers/ComfyUI single-file layout.

Sources: HiDream-ai's reference ``hi_diffusers/models/transformers/transformer_hidream_image.py``
(HiDreamImageTransformer2DModel, with its MoE feed-forward after DeepSeek-V3) and the
``transformer/config.json`` of HiDream-ai/HiDream-I1-Full, -Dev and -Fast on Hugging Face, as
ComfyUI's ``comfy/ldm/hidream/model.py`` implements them (same state_dict names). ComfyUI's
``model_detection.py`` recognizes it by ``caption_projection.0.linear.weight`` (image_model
"hidream") and reads nothing else from the shapes: depth (16 + 32), 20 heads of 128, 4 routed
experts, the text widths and 16 latent channels are hard-coded, so only the full-size model loads
there. To load a smaller one, its detection would have to read them: num_layers and num_single_layers
(count the blocks), num_attention_heads (x_embedder rows / 128), num_routed_experts (count
``ff_i.experts``), caption_channels ([T5's, Llama's] caption_projection widths), text_emb_dim
(p_embedder), in/out_channels (x_embedder / 4), and llama_layers cut to one entry per block.
ComfyUI-GGUF's converter calls it ``hidream`` (caption_projection.0 and
``double_stream_blocks.0.block.ff_i.shared_experts.w3.weight``) and keeps ``.ff_i.gate.weight``
and ``img_emb.emb_pos`` F32 (the latter is no HiDream tensor: the list shares Wan's name).

Blocks: 16 double-stream (image and text streams, joint attention, image MoE feed-forward, text
SwiGLU) then 32 single-stream blocks (48). Each block's image feed-forward is a mixture of experts:
a shared SwiGLU (``ff_i.shared_experts``), routed SwiGLUs (``ff_i.experts.N``, 2 of 4 active per
token) and the router (``ff_i.gate``). Every in-block 2-D tensor is an ``operations.Linear`` weight
(quantizable) but for ``ff_i.gate.weight``: a plain ``nn.Parameter`` the router applies with
``F.linear``, which ComfyUI-GGUF's ops cannot dequantize, so it stays F32 (it is 4 x hidden values).
Outside the blocks (timestep, pooled and patch embedders, the 49 caption projections, the final
layer) everything stays F32.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .family import ArchitectureError, BlockGroup, Family, Shapes, count_blocks, linear, need

# Head size of HiDream's attention (ComfyUI hard-codes it); the rotary axes split it (64, 32, 32).
HIDREAM_HEAD_DIM = 128
# Pixels a token packs per side: a token is 2x2 latent pixels.
PATCH_SIZE = 2
# Timestep embedding width before the timestep MLP.
TIMESTEP_FEATURES = 256
# SwiGLU hidden widths are rounded up to this multiple.
SWIGLU_MULTIPLE = 256


def _swiglu_width(hidden_dim: int) -> int:
    """The hidden width FeedForwardSwiGLU builds for a nominal ``hidden_dim``: 2/3 of it, rounded up to 256."""
    width = int(2 * hidden_dim / 3)
    return SWIGLU_MULTIPLE * -(-width // SWIGLU_MULTIPLE)


@dataclass(frozen=True)
class HiDreamConfig:
    """HiDream-I1's dimensions; the defaults are HiDream-I1's (Full, Dev and Fast)."""

    hidden_size: int = 2560  # 20 heads of 128
    depth_double: int = 16
    depth_single: int = 32
    routed_experts: int = 4  # per block's image feed-forward; 2 active per token (not in the shapes)
    in_channels: int = 16  # latent channels; a token packs 2x2 of them
    pooled_dim: int = 2048  # CLIP-L (768) and CLIP-G (1280) pooled, concatenated
    t5_dim: int = 4096  # T5-XXL's width: the last caption projection
    llama_dim: int = 4096  # Llama-3.1-8B's width: one caption projection per block

    @property
    def heads(self) -> int:
        return self.hidden_size // HIDREAM_HEAD_DIM

    @property
    def head_dim(self) -> int:
        return HIDREAM_HEAD_DIM

    @property
    def expert_width(self) -> int:
        """Hidden width of each routed expert and of the text stream's feed-forward."""
        return _swiglu_width(4 * self.hidden_size)

    @property
    def shared_expert_width(self) -> int:
        return _swiglu_width(2 * self.hidden_size)



def _swiglu(shapes: Shapes, name: str, dim: int, width: int) -> None:
    linear(shapes, f"{name}.w1", dim, width, bias=False)
    linear(shapes, f"{name}.w2", width, dim, bias=False)
    linear(shapes, f"{name}.w3", dim, width, bias=False)


def _attention(shapes: Shapes, name: str, dim: int, streams: tuple[str, ...]) -> None:
    for stream in streams:
        for projection in ("to_q", "to_k", "to_v", "to_out"):
            linear(shapes, f"{name}.{projection}{stream}", dim, dim)
        shapes[f"{name}.q_rms_norm{stream}.weight"] = (dim,)
        shapes[f"{name}.k_rms_norm{stream}.weight"] = (dim,)


def _block(shapes: Shapes, name: str, config: HiDreamConfig, double: bool) -> None:
    h = config.hidden_size
    linear(shapes, f"{name}.adaLN_modulation.1", h, (12 if double else 6) * h)
    _attention(shapes, f"{name}.attn1", h, ("", "_t") if double else ("",))
    _swiglu(shapes, f"{name}.ff_i.shared_experts", h, config.shared_expert_width)
    for expert in range(config.routed_experts):
        _swiglu(shapes, f"{name}.ff_i.experts.{expert}", h, config.expert_width)
    shapes[f"{name}.ff_i.gate.weight"] = (config.routed_experts, h)
    if double:
        _swiglu(shapes, f"{name}.ff_t", h, config.expert_width)


class HiDream(Family):
    name = "hidream"
    title = "HiDream-I1"
    gguf_arch = "hidream"
    groups = (BlockGroup("double", "double_stream_blocks", "depth_double"),
              BlockGroup("single", "single_stream_blocks", "depth_single"))
    recognized_by = ("caption_projection.0.linear.weight",
                     "double_stream_blocks.0.block.ff_i.shared_experts.w3.weight")
    # The converter's list: the router's Parameter, and a Wan key it shares the list with (no HiDream tensor).
    kept_in_blocks = (".ff_i.gate.weight",)
    identity_keys = ("x_embedder.proj.weight", "double_stream_blocks.0.block.attn1.to_q.weight",
                     "final_layer.linear.weight")
    Config = HiDreamConfig
    configs = {
        # HiDream-ai/HiDream-I1-Full (and -Dev, -Fast) transformer/config.json: 17 B parameters.
        "hidream-i1": HiDreamConfig(),
    }
    # HiDream's head size and text widths, 256 wide, 2 + 3 blocks (ComfyUI cannot load it: see the docstring);
    # 5 experts, so the router's weight (5 x 256) is over SMALL_TENSOR and kept F32 by name, as at full size.
    tiny = HiDreamConfig(hidden_size=256, depth_double=2, depth_single=3, routed_experts=5)
    reference_tokens = 4224  # 1024x1024: 4096 image tokens and 128 of T5 text joined to them

    @classmethod
    def describe(cls, config: HiDreamConfig) -> str:
        return (f"HiDream-I1 ({config.depth_double} double + {config.depth_single} single blocks, "
                f"hidden {config.hidden_size}, {config.routed_experts} experts)")

    @classmethod
    def shapes(cls, config: HiDreamConfig) -> Shapes:
        h = config.hidden_size
        shapes: Shapes = {}
        for embedder, n_in in (("t_embedder.timestep_embedder", TIMESTEP_FEATURES),
                               ("p_embedder.pooled_embedder", config.pooled_dim)):
            linear(shapes, f"{embedder}.linear_1", n_in, h)
            linear(shapes, f"{embedder}.linear_2", h, h)
        linear(shapes, "x_embedder.proj", config.in_channels * PATCH_SIZE ** 2, h)
        for i in range(config.depth_double):
            _block(shapes, f"double_stream_blocks.{i}.block", config, double=True)
        for i in range(config.depth_single):
            _block(shapes, f"single_stream_blocks.{i}.block", config, double=False)
        linear(shapes, "final_layer.linear", h, config.in_channels * PATCH_SIZE ** 2)
        linear(shapes, "final_layer.adaLN_modulation.1", h, 2 * h)
        # One Llama projection per block, in forward order, then T5's.
        n_blocks = config.depth_double + config.depth_single
        for i in range(n_blocks + 1):
            linear(shapes, f"caption_projection.{i}.linear", config.llama_dim if i < n_blocks else config.t5_dim, h,
                    bias=False)
        return shapes

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> HiDreamConfig:
        hidden, patch_values = need(keys, "x_embedder.proj.weight", cls.title)
        if hidden % HIDREAM_HEAD_DIM or patch_values % PATCH_SIZE ** 2:
            raise ArchitectureError(f"x_embedder.proj.weight has shape {(hidden, patch_values)}, expected "
                                    f"(heads x {HIDREAM_HEAD_DIM}, channels x {PATCH_SIZE ** 2})")
        final = need(keys, "final_layer.linear.weight", cls.title)
        if final != (patch_values, hidden):
            raise ArchitectureError(f"final_layer.linear.weight has shape {final}, expected {(patch_values, hidden)}")
        depth_double = count_blocks(keys, "double_stream_blocks", cls.title)
        depth_single = count_blocks(keys, "single_stream_blocks", cls.title)
        n_blocks = depth_double + depth_single
        projections = count_blocks(keys, "caption_projection", cls.title)
        if projections != n_blocks + 1:
            raise ArchitectureError(f"{cls.title} checkpoint has {projections} caption_projection, "
                                    f"expected {n_blocks + 1} (one per block and T5's)")
        ff_i = "double_stream_blocks.0.block.ff_i"
        routed_experts = count_blocks(keys, f"{ff_i}.experts", cls.title)
        config = HiDreamConfig(
            hidden_size=hidden, depth_double=depth_double, depth_single=depth_single,
            routed_experts=routed_experts, in_channels=patch_values // PATCH_SIZE ** 2,
            pooled_dim=need(keys, "p_embedder.pooled_embedder.linear_1.weight", cls.title)[1],
            t5_dim=need(keys, f"caption_projection.{n_blocks}.linear.weight", cls.title)[1],
            llama_dim=need(keys, "caption_projection.0.linear.weight", cls.title)[1])
        for key, expected in ((f"{ff_i}.gate.weight", (routed_experts, hidden)),
                              (f"{ff_i}.experts.0.w1.weight", (config.expert_width, hidden)),
                              (f"{ff_i}.shared_experts.w1.weight", (config.shared_expert_width, hidden))):
            if need(keys, key, cls.title) != expected:
                raise ArchitectureError(f"{key} has shape {keys[key]}, expected {expected} for hidden size {hidden}")
        return config
