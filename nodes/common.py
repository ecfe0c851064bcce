"""What the three nodes share: the costs folder, the model's weights as a source, the mx GGUF type, progress."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.utils
import folder_paths

from ..quant.atomic import checked_name
from ..quant.checkpoint import Source, state_dict_source
from ..quant.costs import BUILTIN, CostError, CostTable, resolve_costs
from ..quant.models import Model, detect
from ..quant.speed import (PROFILED_TYPES, SpeedError, SpeedProfile, comfyui_gguf_dequantizer, covers, device_name,
                           find_comfyui_gguf, load_speed, measure, save_speed, weight_shapes)
from ..quant.tensor_plan import tensor_type

CATEGORY = "mxgguf"
MixedGGUF = io.Custom("MX_GGUF")  # Quantize's output, Save's input: a quantize_model result
PREFIX = "diffusion_model."  # the diffusion model's keys in a ModelPatcher's state dict and its patches
COSTS_FOLDER = "mxgguf_costs"  # models/mxgguf_costs/*.json
SPEED_SUFFIX = ".speed.json"  # speed profiles kept beside the costs, one per device, family and model width
BUILTIN_CHOICES = [f"builtin:{name}" for name in BUILTIN]
# Costs estimated from the MODEL's own weights (``quant.estimate``): any family, no capture needed.
ESTIMATE_CHOICE = "estimate from the weights"
# Quantize's target choices -> Target.of's keywords
TARGETS = {"bits per parameter": "bpw", "file size (GB)": "size_gb", "card size (GB)": "card_gb"}


def register_costs_folder() -> None:
    if COSTS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[COSTS_FOLDER] = (
            [os.path.join(folder_paths.models_dir, COSTS_FOLDER)], {".json"})


def costs_path(name: str) -> Path:
    """Where the costs file called ``name`` lives (the first costs folder; ``.json`` added)."""
    name = checked_name(name)
    if not name.endswith(".json"):
        name += ".json"
    found = folder_paths.get_full_path(COSTS_FOLDER, name)
    return Path(found) if found else Path(folder_paths.get_folder_paths(COSTS_FOLDER)[0]) / name


def cost_table(name: str) -> CostTable:
    """The cost table a costs choice names: a built-in one, or a file in models/mxgguf_costs."""
    if name == ESTIMATE_CHOICE:
        raise CostError("costs estimated from the weights are made from the MODEL when Mixed GGUF Quantize "
                        "runs: its summary and chart show the plan then")
    spec = name if name.startswith("builtin:") else costs_path(name)
    if isinstance(spec, Path) and not spec.exists():
        raise CostError(f"costs file {name!r} does not exist yet in models/{COSTS_FOLDER}; run Capture Layer "
                        f"Costs first (and wire the sampler's LATENT into 'after' when both are in one graph)")
    return resolve_costs(spec)


def costs_choices() -> list[str]:
    files = [n for n in folder_paths.get_filename_list(COSTS_FOLDER) if not n.endswith(SPEED_SUFFIX)]
    return BUILTIN_CHOICES + [ESTIMATE_CHOICE] + files


IMATRIX_SUFFIX = ".imatrix.gguf"  # importance matrices Capture writes beside the costs


def imatrix_choices() -> list[str]:
    """"none" and the importance matrices in the costs folders."""
    found = set()
    for folder in folder_paths.get_folder_paths(COSTS_FOLDER):
        if os.path.isdir(folder):
            found.update(n for n in os.listdir(folder) if n.endswith(IMATRIX_SUFFIX))
    return ["none"] + sorted(found)


def imatrix_path(name: str) -> Path:
    name = checked_name(name)
    for folder in folder_paths.get_folder_paths(COSTS_FOLDER):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise FileNotFoundError(f"no importance matrix {name!r} in models/{COSTS_FOLDER}")


def file_state(find: Callable[[str], Path], name: str) -> tuple[int, int] | str:
    """What ComfyUI compares to tell a changed input file (``find(name)``): its (mtime_ns, size),
    or why there is none."""
    try:
        st = find(name).stat()
    except (OSError, ValueError) as e:  # missing, or a name checked_name refuses
        return f"unreadable: {e}"
    return st.st_mtime_ns, st.st_size


def speed_profile(model, family_model: Model, shapes, types: Sequence[str]) -> SpeedProfile:
    """The speed profile of the model's load device for this model's weights in ``types``: the one
    kept in models/mxgguf_costs/, else measured now with ComfyUI-GGUF's dequantize functions
    (seconds on a GPU, a minute or more on a CPU) and kept, with the types it had before."""
    device = model.load_device
    kept = kept_speed_profile(device, family_model)
    stored = stored_types(family_model, shapes, types)
    if kept is not None and covers(kept, family_model, shapes, stored):
        return kept
    kept_types = set() if kept is None else set.intersection(set(PROFILED_TYPES),
                                                               *(set(t) for t in kept.dequant_seconds.values()))
    module = find_comfyui_gguf(folder_paths.get_folder_paths("custom_nodes"))
    profile = measure(family_model, shapes, device, family_model.family.reference_tokens,
                      sorted(set(stored) | kept_types),
                      dequantizer=comfyui_gguf_dequantizer(module) if module else None,
                      dequantizer_name="ComfyUI-GGUF" if module else "mxgguf", progress=progress_bar(1))
    path = kept_speed_path(device, family_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_speed(profile, path, overwrite=True)  # only a profile found unreadable or short of types above
    return profile


def stored_types(family_model: Model, shapes, types: Sequence[str]) -> list[str]:
    """The types a file's weights take when its recipe allows ``types`` (row fallbacks included)."""
    return sorted({tensor_type(t, s) for t in types for s in weight_shapes(family_model, shapes)})


def kept_speed_path(device, family_model: Model) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in device_name(device)).strip("-").lower()
    return Path(folder_paths.get_folder_paths(COSTS_FOLDER)[0]) / f"{slug}_{speed_profile_name(family_model)}"


def kept_speed_profile(device, family_model: Model) -> SpeedProfile | None:
    """The profile Quantize measured on ``device`` for this model and kept, at the family's step;
    None where there is none (or it is unreadable, or for another token count)."""
    path = kept_speed_path(device, family_model)
    try:
        kept = load_speed(path) if path.exists() else None
    except SpeedError:
        return None
    return kept if kept is not None and kept.tokens == family_model.family.reference_tokens else None


def speed_profile_name(family_model: Model) -> str:
    """A kept profile's file name after the device: its family and a digest of its config (the
    block times depend on both; profiles from before families are measured again once)."""
    config = json.dumps(family_model.fingerprint(), sort_keys=True).encode()
    return f"{family_model.family.name}_{hashlib.sha256(config).hexdigest()[:8]}{SPEED_SUFFIX}"


def diffusion_model(model) -> torch.nn.Module:
    return model.model.diffusion_model


def refuse_quantized(model, why: str) -> None:
    """Costs and quantization start from full-precision weights: refuse GGUF and fp8 models."""
    for name, p in diffusion_model(model).named_parameters():
        qtype = getattr(p, "tensor_type", None) or getattr(p.data, "tensor_type", None)
        if qtype is not None:  # ComfyUI-GGUF marks the parameter or, on some paths, only its data
            raise ValueError(f"this MODEL is already GGUF-quantized ({name} is {qtype.name}); {why}. "
                             f"Load the full-precision checkpoint with 'Load Diffusion Model' instead")
        if p.is_floating_point() and p.dtype.itemsize == 1:
            raise ValueError(f"this MODEL holds {p.dtype} weights ({name}); {why}. Load the checkpoint with "
                             f"weight_dtype 'default' (bf16/fp16/fp32)")


def model_source(model, name: str = "ComfyUI MODEL") -> tuple[Source, Model]:
    """The MODEL's diffusion weights as ComfyUI loaded them, before any weight patch, read tensor
    by tensor (no copies). A clone that sampled with a LoRA may have patched the shared weights in
    place; ComfyUI's backup of the originals (shared by clones) is read for those."""
    state = {key.removeprefix(PREFIX): entry[0][0] for key, entry in model.get_key_patches(PREFIX).items()}
    source = state_dict_source(state, name)
    return source, detect(source.shapes)


def progress_bar(total: int) -> Callable[[int, int], None]:
    """A (done, total) callback that drives ComfyUI's progress bar and raises on Cancel."""
    bar = comfy.utils.ProgressBar(total)

    def update(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    return update
