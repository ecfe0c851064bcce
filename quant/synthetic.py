"""Random FLUX-layout checkpoints for the demo, the tests and the benches.

No real FLUX weights are needed to exercise the pipeline: these have FLUX.1's exact key
names and shape relations (``quant.arch.flux_shapes``) at any width and depth.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .arch import FluxConfig, flux_shapes

# Two double and four single blocks at width 256: the whole pipeline in seconds.
TINY = FluxConfig()



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
