"""Random checkpoints in a family's exact layout, for the demo, the tests and the benches.

No real weights are needed to exercise the pipeline: these have a family's exact key names
and shapes (its ``shapes(config)``) at any width and depth.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

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


def random_lora(model: Model, keys: Iterable[str], rank: int = 8, seed: int = 0, alpha: float | None = None,
                kohya: bool = False, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A LoRA on the (prefix-free) tensors ``keys``, in ComfyUI's generic key format or kohya's:
    each update ``up @ down`` about a tenth of its weight's scale."""
    gen = torch.Generator().manual_seed(seed)
    shapes = model.shapes()
    out = {}
    for key in keys:
        rows, cols = shapes[key][0], math.prod(shapes[key][1:])
        stem = key.removesuffix(".weight")
        name = f"lora_unet_{stem.replace('.', '_')}" if kohya else f"diffusion_model.{stem}"
        out[f"{name}.lora_up.weight"] = (torch.randn(rows, rank, generator=gen) * 0.1 / rank ** 0.5).to(dtype)
        out[f"{name}.lora_down.weight"] = (torch.randn(rank, cols, generator=gen) / cols ** 0.5).to(dtype)
        if alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out
