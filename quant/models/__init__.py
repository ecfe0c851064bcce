"""The model families this pack knows, one module each, and how a checkpoint is matched to one.

Every other layer asks a ``Model`` (a checkpoint of a family) which blocks it has, which
tensors belong to each and what stays F32; nothing outside this package names a family.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Each module registers its family as it is imported.
from . import chroma, flux1, flux2, hidream, lumina2, qwen_image, wan, z_image  # noqa: F401
from .family import COMFY_PREFIX, ArchitectureError, BlockGroup, Family, Model, Shapes, check_layout

__all__ = ["DEFAULT_MODEL", "COMFY_PREFIX", "ArchitectureError", "BlockGroup", "Family", "Model", "Shapes", "FAMILIES",
           "detect", "family", "from_fingerprint", "legacy_family", "named_model", "NAMED_CONFIGS"]

FAMILIES: Mapping[str, type[Family]] = Family.registry
# What the command line plans and times where it is given no model.
DEFAULT_MODEL = "flux1-dev"
# Every named full-size configuration: "flux1-dev" -> (family, config).
NAMED_CONFIGS: dict[str, tuple[type[Family], Any]] = {
    name: (fam, config) for fam in FAMILIES.values() for name, config in fam.configs.items()}

# Layouts no family reads, by a key that shows them, so a refusal can say what was found.
_FOREIGN = (
    ("single_transformer_blocks.0.attn.to_q.weight", "FLUX in the diffusers layout; use the single-file "
                                                     "BFL/ComfyUI checkpoint (double_blocks.*, single_blocks.*)"),
    ("joint_blocks.0.x_block.attn.qkv.weight", "SD3/SD3.5"),
    ("input_blocks.0.0.weight", "an SD1.x/SDXL UNet"),
    ("model.layers.0.self_attn.q_proj.weight", "a language model"),
    ("nerf_blocks.0.norm.scale", "Chroma Radiance (pixel-space Chroma), which is not supported"),
    ("blocks.0.attn1.to_q.weight", "Wan in the diffusers layout; use the single-file ComfyUI checkpoint"),
    ("all_x_embedder.2-1.weight", "Z-Image in the diffusers layout; use the single-file ComfyUI checkpoint"),
)


def family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ArchitectureError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect(shapes: Mapping[str, Sequence[int]]) -> Model:
    """The family and config of a checkpoint from its tensor names and shapes, bare or under
    ComfyUI's ``model.diffusion_model.`` prefix (tensors outside it, such as a full checkpoint's VAE,
    are not the model's); ArchitectureError naming what was found otherwise, or the first tensor
    that does not fit the config read."""
    if not shapes:
        raise ArchitectureError("the checkpoint holds no tensors")
    prefix = COMFY_PREFIX if any(k.startswith(COMFY_PREFIX) for k in shapes) else ""
    keys = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    found = [fam for fam in FAMILIES.values() if fam.recognizes(keys)]
    if len(found) != 1:
        what = " and ".join(f.title for f in found) if found else _what_it_is(keys)
        raise ArchitectureError(f"not a model of a known family ({', '.join(f.title for f in FAMILIES.values())}) "
                                f"in ComfyUI's single-file layout: {what}")
    model = Model(found[0], found[0].read_config(keys), prefix)
    check_layout(keys, model)
    return model


def legacy_family(arch: object = None) -> type[Family]:
    """The family that cost tables and recipes from before families were for (they name at
    most its GGUF ``arch``)."""
    legacy = [f for f in FAMILIES.values() if f.legacy_arch]
    if arch is not None and arch != legacy[0].legacy_arch:
        raise ArchitectureError(f"no 'family' given, and arch {arch!r} is not {legacy[0].legacy_arch!r}")
    return legacy[0]


def from_fingerprint(fingerprint: Mapping[str, Any]) -> Model:
    """The model a cost table's fingerprint records (its family, at that config)."""
    fam = family(str(fingerprint["family"])) if "family" in fingerprint else legacy_family(fingerprint.get("arch"))
    return Model(fam, fam.config_from_fingerprint(fingerprint))


def named_model(name: str) -> Model:
    """A named full-size configuration (``flux1-dev``, ...), for plans without a checkpoint."""
    if name not in NAMED_CONFIGS:
        raise ArchitectureError(f"no model named {name!r}; known: {', '.join(NAMED_CONFIGS)}")
    fam, config = NAMED_CONFIGS[name]
    return Model(fam, config)


def _what_it_is(keys: Mapping[str, object]) -> str:
    bare = {k.removeprefix("transformer.").removeprefix("model.") for k in keys} | set(keys)
    for marker, name in _FOREIGN:
        if marker in bare:
            return f"it looks like {name} (found {marker})"
    sample = ", ".join(sorted(keys)[:4])
    return f"found {len(keys)} tensors such as {sample}"
