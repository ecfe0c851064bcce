"""Random FLUX-layout checkpoints for the demo, the tests and the benches.

No real FLUX weights are needed to exercise the pipeline: these have FLUX.1's exact key
names and shape relations (BFL/ComfyUI layout) at any width and depth. ``STOCK`` widths
are what ComfyUI's model detection assumes, so a shallow stock model loads unpatched.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FluxConfig:
    hidden: int = 256
    heads: int = 4
    depth_double: int = 2
    depth_single: int = 4
    context_in_dim: int = 256
    vec_in_dim: int = 768
    mlp_ratio: float = 4.0
    in_channels: int = 16
    guidance: bool = True  # dev-style; schnell has no guidance_in

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)


TINY = FluxConfig()
STOCK = FluxConfig(hidden=3072, heads=24, context_in_dim=4096)
FLUX1_DEV = FluxConfig(hidden=3072, heads=24, context_in_dim=4096, depth_double=19, depth_single=38)


def flux_shapes(cfg: FluxConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in checkpoint order."""
    h, m, head_dim = cfg.hidden, cfg.mlp_hidden, cfg.hidden // cfg.heads
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    def qk_norm(name: str) -> None:
        shapes[f"{name}.query_norm.scale"] = (head_dim,)
        shapes[f"{name}.key_norm.scale"] = (head_dim,)

    linear("img_in", cfg.in_channels * 4, h)
    for embedder, n_in in (("time_in", 256), ("vector_in", cfg.vec_in_dim)) + (
            (("guidance_in", 256),) if cfg.guidance else ()):
        linear(f"{embedder}.in_layer", n_in, h)
        linear(f"{embedder}.out_layer", h, h)
    linear("txt_in", cfg.context_in_dim, h)
    for i in range(cfg.depth_double):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}"
            linear(f"{b}_mod.lin", h, 6 * h)
            linear(f"{b}_attn.qkv", h, 3 * h)
            qk_norm(f"{b}_attn.norm")
            linear(f"{b}_attn.proj", h, h)
            linear(f"{b}_mlp.0", h, m)
            linear(f"{b}_mlp.2", m, h)
    for i in range(cfg.depth_single):
        b = f"single_blocks.{i}"
        linear(f"{b}.linear1", h, 3 * h + m)
        linear(f"{b}.linear2", h + m, h)
        qk_norm(f"{b}.norm")
        linear(f"{b}.modulation.lin", h, 3 * h)
    linear("final_layer.linear", h, 4 * cfg.in_channels)
    linear("final_layer.adaLN_modulation.1", h, 2 * h)
    return shapes


def random_tensors(cfg: FluxConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16, prefix: str = "",
                   device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, one at a time: variance-preserving weights, small biases, norm scales near 1.
    Drawn on ``device`` (a GPU makes FLUX.1-dev's 12 B in seconds; the values differ from the CPU's)."""
    gen = torch.Generator(device).manual_seed(seed)
    for name, shape in flux_shapes(cfg).items():
        noise = torch.randn(shape, generator=gen, device=device)
        if name.endswith(".scale"):
            t = 1.0 + 0.05 * noise
        elif name.endswith(".bias"):
            t = 0.02 * noise
        else:
            t = noise / shape[1] ** 0.5
        yield prefix + name, t.to(dtype)


def random_state_dict(cfg: FluxConfig = TINY, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      prefix: str = "", device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return dict(random_tensors(cfg, seed, dtype, prefix, device))
