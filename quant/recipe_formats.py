"""Recipes to and from other tools' formats.

- mixed-gguf-converter's ``configurations.yaml`` (github.com/chrisgoringe/mixed-gguf-converter):
  ``casts`` entries of ``castto`` (a type, K-quant names as llama.cpp's file types: ``Q4_K_S``)
  and ``layers`` (block ranges, ``"0-2, 4"``); blocks no cast names stay at a default type.
- llama.cpp's ``llama-quantize --tensor-type PATTERN=TYPE`` options, one per block.
- stable-diffusion.cpp's ``--tensor-type-rules`` string (``regex=type`` joined by commas,
  names under its ``model.diffusion_model.`` prefix).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import codecs
from .models import COMFY_PREFIX, Model
from .recipe import Recipe, RecipeError, parse_blocks

# llama.cpp file-type suffixes name mixes, not types: Q4_K_S is Q4_K blocks.
_FILE_TYPE_SUFFIX = re.compile(r"^(Q[2-6]_K)_[SML]$")


def _type_name(name: str) -> str:
    upper = str(name).strip().upper()
    m = _FILE_TYPE_SUFFIX.match(upper)
    upper = m.group(1) if m else upper
    if upper not in codecs.TYPE_NAMES:
        raise RecipeError(f"unknown type {name!r} in casts; known: {', '.join(codecs.TYPE_NAMES)}")
    return upper


def from_casts(config: Mapping[str, Any], model: Model, default: str = "BF16", name: str = "") -> Recipe:
    """A recipe for ``model`` from one configuration of mixed-gguf-converter (a mapping with ``casts``)."""
    casts = config.get("casts") if isinstance(config, Mapping) else None
    if not isinstance(casts, list):
        raise RecipeError("a configuration needs 'casts': a list of {castto, layers}")
    types = [_type_name(default)] * model.n_blocks
    for i, cast in enumerate(casts):
        if not isinstance(cast, Mapping) or "castto" not in cast or "layers" not in cast:
            raise RecipeError(f"cast {i} needs 'castto' and 'layers', got {cast!r}")
        for block in parse_blocks(str(cast["layers"]), len(types)):
            types[block] = _type_name(cast["castto"])
    return Recipe.for_model(model, types, name=name, notes={"imported_from": "casts"})


def pick_configuration(data: Any, name: str | None) -> tuple[str, Mapping[str, Any]]:
    """A file may hold one configuration (top-level ``casts``) or several by name."""
    if isinstance(data, Mapping) and "casts" in data:
        return name or "", data
    if not isinstance(data, Mapping) or not data:
        raise RecipeError("not a configurations file: expected 'casts' or named configurations")
    if name is None:
        if len(data) > 1:
            raise RecipeError(f"the file holds several configurations; pick one: {', '.join(map(str, data))}")
        name = next(iter(data))
    if name not in data:
        raise RecipeError(f"no configuration {name!r}; the file has {', '.join(map(str, data))}")
    return str(name), data[name]


def _block_pattern(recipe: Recipe, block: int) -> str:
    return re.escape(recipe.block_name(block) + ".")


def llama_cpp_tensor_types(recipe: Recipe) -> list[str]:
    """``llama-quantize`` arguments: ``--tensor-type double_blocks\\.0\\.=q8_0`` per block."""
    return [f"--tensor-type {_block_pattern(recipe, b)}={t.lower()}" for b, t in enumerate(recipe.types)]


def sd_cpp_tensor_type_rules(recipe: Recipe) -> str:
    """stable-diffusion.cpp's ``--tensor-type-rules`` value."""
    prefix = re.escape(COMFY_PREFIX)
    return ",".join(f"^{prefix}{_block_pattern(recipe, b)}={t.lower()}" for b, t in enumerate(recipe.types))
