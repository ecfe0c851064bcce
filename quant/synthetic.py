"""Random checkpoints in a family's exact layout, for the demo, the tests and the benches.

No real weights are needed to exercise the pipeline: these have a family's exact key names
and shapes (its ``shapes(config)``) at any width and depth.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .models import Model


def random_tensors(model: Model, seed: int = 0, dtype: torch.dtype = torch.bfloat16, prefix: str = "",
                   device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, one at a time: variance-preserving weights (over each output's
    inputs), small biases, norm scales near 1. Drawn on ``device`` (a GPU makes a 12 B model in
    seconds; the values differ from the CPU's)."""
    gen = torch.Generator(device).manual_seed(seed)
    for name, shape in model.shapes().items():
        noise = torch.randn(shape, generator=gen, device=device)
        if len(shape) >= 2:
            t = noise / math.prod(shape[1:]) ** 0.5
        elif name.endswith(".bias"):
            t = 0.02 * noise
        else:  # norm scales and other 1-D parameters
            t = 1.0 + 0.05 * noise
        yield prefix + name, t.to(dtype)


def random_state_dict(model: Model, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      prefix: str = "", device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return dict(random_tensors(model, seed, dtype, prefix, device))
