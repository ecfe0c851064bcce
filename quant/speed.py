"""Speed profiles: what each GGUF type costs per sampling step, on one device.

A GGUF model samples slower than the unquantized model because the loader dequantizes every
weight at every step. How much depends on the type: a profile records, for each weight
shape of the model and each type, the time to dequantize that weight as the loader does
(ComfyUI-GGUF's own functions where they can be found, this pack's otherwise: the profile
says which), the matmul time of that weight at a reference token count, and the time of one
block forward of each block group (FLUX.1: a double and a single block) at that token count,
all in the dtype ComfyUI computes in on that device. A recipe's predicted step time over the unquantized model's is then

    slowdown = 1 + (dequantization time of its weights) / (unquantized step time),

the step being the blocks' forwards (embedders and final layer are small and the same
either way; they stay F32, used as they are). Seconds on a GPU, minutes at full width on a CPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import gguf
import torch
import torch.nn.functional as F

from . import codecs
from .models import Model
from .atomic import atomic_write_text, load_json
from .tensor_plan import TensorPlan

SPEED_FORMAT = "mxgguf-speed/1"
# Types a weight can take in a file: the quantized ones, and BF16/F16 (a cast or a bit shift).
PROFILED_TYPES = tuple(codecs.QUANTIZED_TYPE_NAMES) + ("BF16", "F16")
Dequantizer = Callable[[torch.Tensor, str, tuple[int, ...], torch.dtype], torch.Tensor]


class SpeedError(ValueError):
    """A speed profile that is malformed or does not cover the model or types at hand."""


def shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


@dataclass
class SpeedProfile:
    """Seconds per step on one device: dequantizing each weight shape in each type, and unquantized blocks."""

    device: str
    tokens: int
    dequantizer: str
    dtype: str  # the compute dtype: weights are dequantized to it, blocks run in it
    block_seconds: dict[str, float]  # block group ("double", "single", ...) -> one block's unquantized forward
    dequant_seconds: dict[str, dict[str, float]]  # shape key -> type -> seconds
    matmul_seconds: dict[str, float]  # shape key -> seconds, at ``tokens``
    provenance: dict[str, Any] = field(default_factory=dict)

    def step_seconds(self, model: Model) -> float:
        """The unquantized model's blocks, one step."""
        measured_on = self.provenance.get("family", model.family.name)  # profiles before families: FLUX.1's
        if measured_on != model.family.name:
            raise SpeedError(f"the speed profile was measured on another model family ({measured_on}), "
                             f"not on {model.family.title}")
        missing = set(model.depths) - set(self.block_seconds)
        if missing:
            raise SpeedError(f"the speed profile has no block time for {', '.join(sorted(missing))} blocks; "
                             f"it was measured on another model family")
        return sum(n * self.block_seconds[group] for group, n in model.depths.items())

    def dequant(self, shape: Sequence[int], qtype: str) -> float:
        """Seconds to dequantize one weight of ``shape`` stored as ``qtype`` (F32: none, it is used as is)."""
        if qtype == "F32":
            return 0.0
        try:
            return self.dequant_seconds[shape_key(shape)][qtype]
        except KeyError:
            raise SpeedError(f"the speed profile has no time for {qtype} weights of shape {tuple(shape)}; "
                             f"it was measured for shapes {sorted(self.dequant_seconds)}") from None

    def block_dequant(self, plan: Iterable[TensorPlan], n_blocks: int) -> list[float]:
        """Dequantization seconds per step of each block's weights under ``plan``."""
        per_block = [0.0] * n_blocks
        for t in plan:
            if t.decided:
                per_block[t.block] += self.dequant(t.shape, t.qtype)
        return per_block

    def slowdown(self, model: Model, plan: Iterable[TensorPlan]) -> float:
        """Predicted step time of ``plan``'s file over the unquantized model's."""
        return 1.0 + sum(self.block_dequant(plan, model.n_blocks)) / self.step_seconds(model)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPEED_FORMAT, "device": self.device, "tokens": self.tokens, "dequantizer": self.dequantizer,
                "dtype": self.dtype, "block_seconds": self.block_seconds, "dequant_seconds": self.dequant_seconds,
                "matmul_seconds": self.matmul_seconds, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpeedProfile:
        if not isinstance(d, Mapping) or d.get("format") != SPEED_FORMAT:
            raise SpeedError(f"not a speed profile (expected format {SPEED_FORMAT!r})")
        try:
            p = cls(str(d["device"]), int(d["tokens"]), str(d["dequantizer"]), str(d["dtype"]),
                    {k: float(v) for k, v in d["block_seconds"].items()},
                    {s: {t: float(v) for t, v in types.items()} for s, types in d["dequant_seconds"].items()},
                    {s: float(v) for s, v in d["matmul_seconds"].items()}, dict(d.get("provenance", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpeedError(f"malformed speed profile: {e!r}") from None
        if not p.block_seconds or min(p.block_seconds.values()) <= 0:
            raise SpeedError("a speed profile needs a positive block time for each block group")
        if any(v < 0 for types in p.dequant_seconds.values() for v in types.values()):
            raise SpeedError("a speed profile's times are >= 0")
        return p


def load_speed(path: str | os.PathLike[str]) -> SpeedProfile:
    return load_json(path, SpeedProfile.from_dict, SpeedError)


def save_speed(profile: SpeedProfile, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    atomic_write_text(Path(path), json.dumps(profile.to_dict(), indent=1), overwrite=overwrite)


# --- dequantizers --------------------------------------------------------------------------

def own_dequantizer(raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return codecs.dequantize(raw, qtype, shape).to(dtype)


def comfyui_gguf_dequantizer(module: ModuleType) -> Dequantizer:
    """ComfyUI-GGUF's ``dequant.dequantize`` as its loader calls it when sampling (``dequant_dtype``
    left at its default, then cast to the compute dtype; F16 weights are only cast)."""
    def run(raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if qtype == "F16":
            return raw.view(torch.float16).reshape(shape).to(dtype)
        return module.dequantize(raw, gguf.GGMLQuantizationType[qtype], shape, dtype=None).to(dtype)

    return run


def find_comfyui_gguf(folders: Iterable[str | os.PathLike[str]]) -> ModuleType | None:
    """ComfyUI-GGUF's ``dequant.py`` from the first of ``folders`` (custom-node folders) holding
    it, loaded on its own (it needs only gguf and torch); None where there is none."""
    for folder in folders:
        path = Path(folder) / "ComfyUI-GGUF" / "dequant.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("mxgguf_comfyui_gguf_dequant", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


# --- measuring ------------------------------------------------------------------------------

def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _best_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """The best of three timed calls after a warm-up one (allocations, kernel choice) on a GPU; on
    a CPU, of two, or the first alone where it takes over half a second (the loader allocates anew
    at every step too, and a CPU block forward at 4608 tokens takes many seconds)."""
    first = _seconds(fn, device)
    if device.type == "cpu":
        return first if first > 0.5 else min(first, _seconds(fn, device))
    return min(_seconds(fn, device) for _ in range(3))


def _random_weights(names: Mapping[str, Sequence[int]], device: torch.device, dtype: torch.dtype,
                    gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in names.items():
        t = torch.randn(tuple(shape), generator=gen, device=device)
        out[name] = (t / shape[1] ** 0.5 if len(shape) == 2 else 1.0 + 0.05 * t).to(dtype)
    return out


def _block_seconds(model: Model, shapes: Mapping[str, Sequence[int]], device: torch.device, tokens: int,
                   dtype: torch.dtype, gen: torch.Generator) -> dict[str, float]:
    """One forward of the first block of each group (random weights of its shapes) on ``tokens`` tokens."""
    def weights(block: int) -> dict[str, torch.Tensor]:
        prefix = model.prefix + model.block_name(block) + "."
        return _random_weights({k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}, device, dtype, gen)

    runs = model.family.block_runs(model, weights, tokens, device, dtype, gen)
    with torch.no_grad():
        return {group: _best_seconds(run, device) for group, run in runs.items()}


def weight_shapes(model: Model, shapes: Mapping[str, Sequence[int]]) -> list[tuple[int, ...]]:
    """The distinct shapes of the weights a recipe decides."""
    found = {tuple(s) for k, s in shapes.items() if model.is_quantizable(model.strip_prefix(k), s)}
    return sorted(found)


def device_name(device: torch.device | str) -> str:
    """What a profile is kept under: the GPU's model name, or the CPU with its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu" else device.type


def covers(profile: SpeedProfile, model: Model, shapes: Mapping[str, Sequence[int]],
           types: Sequence[str] = PROFILED_TYPES) -> bool:
    """Whether ``profile`` times every weight shape of this model in every one of ``types``."""
    return all(set(types) <= set(profile.dequant_seconds.get(shape_key(s), {})) for s in weight_shapes(model, shapes))


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """What ComfyUI computes diffusion models in: bf16 on a GPU, float32 on a CPU."""
    return torch.bfloat16 if torch.device(device).type != "cpu" else torch.float32


def measure(model: Model, shapes: Mapping[str, Sequence[int]], device: torch.device | str, tokens: int, types: Sequence[str] = PROFILED_TYPES,
            dequantizer: Dequantizer | None = None, dequantizer_name: str = "mxgguf", dtype: torch.dtype | None = None,
            progress: Callable[[int, int], None] | None = None) -> SpeedProfile:
    """Measure a profile for the model of ``shapes`` on ``device``, computing in ``dtype`` (default:
    ``compute_dtype(device)``). ``progress(done, total)`` after each measurement may raise to cancel."""
    device = torch.device(device)
    dtype = dtype or compute_dtype(device)
    dequantize = dequantizer or own_dequantizer
    gen = torch.Generator(device).manual_seed(0)
    weights = weight_shapes(model, shapes)
    total, done = len(weights) * (len(types) + 1) + 1, 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    dequant: dict[str, dict[str, float]] = {}
    matmul: dict[str, float] = {}
    for shape in weights:
        rows, cols = shape
        w = (torch.randn(shape, generator=gen, device=device) / cols ** 0.5).to(dtype)
        x = torch.randn(tokens, cols, generator=gen, device=device).to(dtype)
        matmul[shape_key(shape)] = _best_seconds(lambda: F.linear(x, w), device)
        step()
        per_type = dequant[shape_key(shape)] = {}
        for qtype in types:
            raw = _stored(w, qtype)
            per_type[qtype] = _best_seconds(lambda: dequantize(raw, qtype, shape, dtype), device)
            step()
        del w, x
    blocks = _block_seconds(model, shapes, device, tokens, dtype, gen)
    step()
    return SpeedProfile(device_name(device), tokens, dequantizer_name, str(dtype).removeprefix("torch."), blocks,
                        dequant, matmul,
                        {"torch": torch.__version__, "family": model.family.name, "model": model.describe(),
                         "block_times": model.family.block_timing})


def _stored(w: torch.Tensor, qtype: str) -> torch.Tensor:
    """``w`` as a GGUF holds it in ``qtype`` (uint8 rows). Only the first rows are quantized and
    then repeated: the time to dequantize does not depend on the values, and quantizing whole
    weights of every type would take minutes on a CPU."""
    head = w[: min(w.shape[0], 64)].float()
    raw = codecs.quantize(head, qtype)
    reps = -(-w.shape[0] // head.shape[0])
    return raw.repeat(reps, 1)[: w.shape[0]].contiguous()
