"""FLUX.1's block stack in plain torch, for measuring costs without ComfyUI.

The same computation as the BFL reference and ComfyUI's ``comfy.ldm.flux`` (modulation,
fused qkv with RMSNorm on q and k, RoPE over (t, h, w) positions, joint attention over
text + image tokens, tanh-GELU MLP), written from the architecture, in float32 by
default. Inside ComfyUI the sweep runs on ComfyUI's own blocks; headless it runs on these.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .family import Model
from .flux1_stack import StackInputs, StackState, join_inputs

if TYPE_CHECKING:
    from ..checkpoint import Source

ROPE_THETA = 10000


def rms_norm(x: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    return F.rms_norm(x, scale.shape, weight=scale.to(x.dtype), eps=eps)


def layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def rope(pos: Tensor, dim: int) -> Tensor:
    """Rotation matrices (..., n, dim/2, 2, 2) for positions along one axis."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (ROPE_THETA ** scale)
    angles = pos.to(torch.float32)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2).to(torch.float32)


def position_embedding(ids: Tensor, axes_dim: tuple[int, ...]) -> Tensor:
    """(batch, tokens, 3) positions -> (batch, 1, tokens, head_dim/2, 2, 2)."""
    return torch.cat([rope(ids[..., i], d) for i, d in enumerate(axes_dim)], dim=-3).unsqueeze(1)


def apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    x_ = x.to(pe.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * x_[..., 0] + pe[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """(batch, heads, tokens, head_dim) each -> (batch, tokens, heads*head_dim)."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = F.scaled_dot_product_attention(q, k, v)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


class BlockWeights:
    """A block's parameters by their checkpoint names (prefix-free, block-relative); ``observe``
    is shown the input of every linear layer (weight name, input)."""

    def __init__(self, tensors: Mapping[str, Tensor], observe: Callable[[str, Tensor], None] | None = None):
        self.t = dict(tensors)
        self.observe = observe

    def linear(self, name: str, x: Tensor) -> Tensor:
        if self.observe is not None:
            self.observe(f"{name}.weight", x)
        return F.linear(x, self.t[f"{name}.weight"].to(x.dtype), self.t[f"{name}.bias"].to(x.dtype))


def _modulation(w: BlockWeights, name: str, vec: Tensor, n: int) -> list[Tensor]:
    return w.linear(name, F.silu(vec)[:, None, :]).chunk(n, dim=-1)


def _qkv(w: BlockWeights, prefix: str, x: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    qkv = w.linear(f"{prefix}qkv", x)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    return (rms_norm(q, w.t[f"{prefix}norm.query_norm.scale"]).to(v),
            rms_norm(k, w.t[f"{prefix}norm.key_norm.scale"]).to(v), v)


def double_block(w: BlockWeights, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor,
                 heads: int) -> tuple[Tensor, Tensor]:
    img_mod = _modulation(w, "img_mod.lin", vec, 6)
    txt_mod = _modulation(w, "txt_mod.lin", vec, 6)
    img_q, img_k, img_v = _qkv(w, "img_attn.", layer_norm(img) * (1 + img_mod[1]) + img_mod[0], heads)
    txt_q, txt_k, txt_v = _qkv(w, "txt_attn.", layer_norm(txt) * (1 + txt_mod[1]) + txt_mod[0], heads)
    attn = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), pe)
    txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
    img = img + img_mod[2] * w.linear("img_attn.proj", img_attn)
    img = img + img_mod[5] * _mlp(w, "img_mlp", layer_norm(img) * (1 + img_mod[4]) + img_mod[3])
    txt = txt + txt_mod[2] * w.linear("txt_attn.proj", txt_attn)
    txt = txt + txt_mod[5] * _mlp(w, "txt_mlp", layer_norm(txt) * (1 + txt_mod[4]) + txt_mod[3])
    return img, txt


def _mlp(w: BlockWeights, name: str, x: Tensor) -> Tensor:
    return w.linear(f"{name}.2", F.gelu(w.linear(f"{name}.0", x), approximate="tanh"))


def single_block(w: BlockWeights, x: Tensor, vec: Tensor, pe: Tensor, heads: int) -> Tensor:
    shift, scale, gate = _modulation(w, "modulation.lin", vec, 3)
    hidden = x.shape[-1]
    qkv_mlp = w.linear("linear1", layer_norm(x) * (1 + scale) + shift)
    qkv, mlp = torch.split(qkv_mlp, [3 * hidden, qkv_mlp.shape[-1] - 3 * hidden], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    q = rms_norm(q, w.t["norm.query_norm.scale"]).to(v)
    k = rms_norm(k, w.t["norm.key_norm.scale"]).to(v)
    out = w.linear("linear2", torch.cat((attention(q, k, v, pe), F.gelu(mlp, approximate="tanh")), 2))
    return x + gate * out


class ReferenceStack:
    """FLUX's blocks over a checkpoint's weights: what ``quant.sweep`` runs headless.

    ``weights(block)`` gives the block's tensors as a dict the sweep may swap entries of.
    """

    def __init__(self, model: Model, source: Source, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        # Weights stay in the checkpoint's dtype (one copy of the model, never a float32
        # second one); each linear casts its weight to the compute dtype as it runs.
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self._read = lambda key: source.read(model.prefix + key).to(device=self.device)
        self._blocks = []
        for b in range(model.n_blocks):
            name = model.block_name(b) + "."
            keys = [model.strip_prefix(k) for k in source.shapes if model.strip_prefix(k).startswith(name)]
            self._blocks.append({k[len(name):]: self._read(k) for k in keys})

    @property
    def n_blocks(self) -> int:
        return self.model.n_blocks

    @property
    def width(self) -> int:
        """The hidden states' width, as saved captures hold them."""
        return self.model.config.hidden_size

    def weights(self, block: int) -> dict[str, Tensor]:
        return self._blocks[block]

    def start(self, inputs: StackInputs) -> StackState:
        return StackState(inputs.img, inputs.txt, inputs.txt.shape[1])

    def join(self, samples: Sequence[StackInputs]) -> list[StackInputs]:
        return [batch for batch, _ in join_inputs(samples)]

    def prepare(self, inputs: StackInputs) -> StackInputs:
        """Saved inputs on this stack's device, in its dtype (rotary tables stay float32)."""
        cast = lambda x: x.to(self.device, self.dtype)  # noqa: E731
        return StackInputs(cast(inputs.img), cast(inputs.txt), cast(inputs.vec), inputs.pe.to(self.device, torch.float32))

    def forward(self, block: int, state: StackState, inputs: StackInputs,
                observe: Callable[[str, Tensor], None] | None = None) -> StackState:
        """Block ``block`` on ``state``; ``observe(name, x)`` sees each linear layer's input, the
        weight named as in a GGUF (``double_blocks.0.img_attn.qkv.weight``)."""
        prefix = self.model.block_name(block) + "."
        w = BlockWeights(self._blocks[block], None if observe is None else lambda name, x: observe(prefix + name, x))
        if block < self.model.config.depth_double:
            img, txt = double_block(w, state.img, state.txt, inputs.vec, inputs.pe, self.model.config.heads)
            return StackState(img, txt, state.txt_tokens)
        x = state.img if state.txt is None else torch.cat((state.txt, state.img), 1)
        return StackState(single_block(w, x, inputs.vec, inputs.pe, self.model.config.heads), None, state.txt_tokens)

    def output(self, state: StackState) -> Tensor:
        return state.image_tokens()

    def make_inputs(self, seed: int, width: int = 256, height: int = 256, sigma: float = 0.6,
                    txt_tokens: int = 64, guidance: float = 3.5) -> StackInputs:
        """Stack inputs for a synthetic sample: a noised random latent at ``sigma``, random
        text states and pooled vector (no text encoder is needed), through the model's own
        embedders."""
        gen = torch.Generator().manual_seed(seed)
        in_features = self._read("img_in.weight").shape[1]
        h, w = height // 16, width // 16  # 8x VAE, 2x2 patches
        clean = torch.randn(1, h * w, in_features, generator=gen) * 0.5
        latent = ((1 - sigma) * clean + sigma * torch.randn(clean.shape, generator=gen)).to(self.device, self.dtype)
        context = torch.randn(1, txt_tokens, self._read("txt_in.weight").shape[1], generator=gen).to(self.device, self.dtype)
        pooled = torch.randn(1, self._read("vector_in.in_layer.weight").shape[1], generator=gen).to(self.device, self.dtype)
        lin = lambda name, x: F.linear(x, self._read(f"{name}.weight").to(self.dtype),  # noqa: E731
                                       self._read(f"{name}.bias").to(self.dtype))
        mlp = lambda name, x: lin(f"{name}.out_layer", F.silu(lin(f"{name}.in_layer", x)))  # noqa: E731
        t = torch.tensor([sigma], device=self.device)
        vec = mlp("time_in", timestep_embedding(t).to(self.dtype))
        if self.model.config.guidance:
            vec = vec + mlp("guidance_in", timestep_embedding(torch.tensor([guidance], device=self.device)).to(self.dtype))
        vec = vec + mlp("vector_in", pooled)
        ids = torch.zeros(1, txt_tokens + h * w, 3, device=self.device)
        ids[0, txt_tokens:, 1] = torch.arange(h, device=self.device).repeat_interleave(w).float()
        ids[0, txt_tokens:, 2] = torch.arange(w, device=self.device).repeat(h).float()
        return StackInputs(lin("img_in", latent), lin("txt_in", context), vec,
                           position_embedding(ids, self.model.config.rope_axes))


def timestep_embedding(t: Tensor, dim: int = 256, max_period: int = 10000, time_factor: float = 1000.0) -> Tensor:
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def block_runs(model: Model, weights: Callable[[int], Mapping[str, Tensor]], tokens: int, device: torch.device,
               dtype: torch.dtype, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    """A forward of the first double and the first single block on ``tokens`` tokens, a ninth of
    them text (4096 + 512 at 1024x1024), ready to be timed."""
    cfg = model.config
    txt, img = max(1, tokens // 9), tokens - max(1, tokens // 9)
    x_img, x_txt, vec = (torch.randn(*shape, generator=gen, device=device).to(dtype)
                         for shape in ((1, img, cfg.hidden_size), (1, txt, cfg.hidden_size), (1, cfg.hidden_size)))
    pe = position_embedding(torch.zeros(1, tokens, 3, device=device), cfg.rope_axes)  # positions: no time
    double, single = BlockWeights(weights(0)), BlockWeights(weights(cfg.depth_double))
    x = torch.cat((x_txt, x_img), 1)
    return {"double": lambda: double_block(double, x_img, x_txt, vec, pe, cfg.heads),
            "single": lambda: single_block(single, x, vec, pe, cfg.heads)}
