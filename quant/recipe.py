"""Recipes: one GGUF type per block, as data (YAML, see ``recipes/README.md``).

What a recipe means for every tensor of a model (its *plan*) is ``quant.tensor_plan``'s.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import codecs
from .atomic import atomic_write_text, load_document
from .models import ArchitectureError, Family, Model, family, legacy_family

RECIPE_FORMAT = "mxgguf-recipe/1"
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class RecipeError(ValueError):
    """A recipe that cannot be read, or does not fit the model."""


@dataclass(frozen=True)
class Recipe:
    """A GGUF type name for each block index (0 .. n_blocks-1) of a family's model, whose
    block groups hold ``depths`` blocks each (in the family's forward order)."""

    types: tuple[str, ...]
    family: str
    depths: tuple[tuple[str, int], ...]  # (group name, blocks), as the family lists its groups
    name: str = ""
    notes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.types) != sum(n for _, n in self.depths):
            raise RecipeError(f"recipe has {len(self.types)} block types for {self.depth_text()} blocks")
        for block, t in enumerate(self.types):
            if t not in codecs.TYPE_NAMES:
                raise RecipeError(f"block {block}: unknown type {t!r}; known: {', '.join(codecs.TYPE_NAMES)}")

    @classmethod
    def for_model(cls, model: Model, types: Sequence[str], name: str = "",
                  notes: Mapping[str, Any] | None = None) -> Recipe:
        return cls(tuple(types), model.family.name, tuple(model.depths.items()), name, dict(notes or {}))

    @classmethod
    def uniform(cls, model: Model, qtype: str) -> Recipe:
        qtype = codecs.get_codec(qtype).name
        return cls.for_model(model, (qtype,) * model.n_blocks, name=f"uniform {qtype}")

    def block_name(self, block: int) -> str:
        """The block's key prefix in the family's checkpoints (``double_blocks.3``)."""
        return family(self.family).block_name([n for _, n in self.depths], block)

    def depth_text(self) -> str:
        return " + ".join(f"{n} {g}" for g, n in self.depths)

    def check_fits(self, model: Model) -> None:
        if self.family != model.family.name:
            raise RecipeError(f"recipe {self.name or ''!s} is for {family(self.family).title}, "
                              f"the model is {model.family.title}")
        if self.depths != tuple(model.depths.items()):
            theirs = " + ".join(f"{n} {g}" for g, n in model.depths.items())
            raise RecipeError(f"recipe {self.name or ''!s} is for {self.depth_text()} blocks, the model has {theirs}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": RECIPE_FORMAT, "family": self.family, "name": self.name,
                             "depth": dict(self.depths), "blocks": list(self.types)}
        if self.notes:
            d["notes"] = dict(self.notes)
        return d


def parse_blocks(spec: str, n_blocks: int) -> list[int]:
    """``"0-2, 4"`` -> [0, 1, 2, 4] (mixed-gguf-converter's ``layers`` syntax)."""
    blocks: list[int] = []
    for part in str(spec).split(","):
        m = _RANGE.match(part)
        if m is None:
            raise RecipeError(f"bad block range {part.strip()!r} in {spec!r}: use e.g. '0-2, 4'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= n_blocks:
            raise RecipeError(f"block range {part.strip()!r} is outside 0..{n_blocks - 1}")
        blocks.extend(range(lo, hi + 1))
    return blocks


def recipe_from_dict(d: Mapping[str, Any]) -> Recipe:
    """Build a recipe from its YAML mapping (``blocks`` a list, or ranges -> type plus ``default``)."""
    if not isinstance(d, Mapping):
        raise RecipeError("a recipe is a YAML mapping with 'family', 'depth' and 'blocks'")
    known = {"format", "family", "arch", "name", "depth", "blocks", "default", "notes"}
    if unknown := set(d) - known:
        raise RecipeError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
    if d.get("format", RECIPE_FORMAT) != RECIPE_FORMAT:
        raise RecipeError(f"recipe format {d['format']!r} is not {RECIPE_FORMAT!r}")
    fam = _recipe_family(d)
    depth = d.get("depth")
    groups = [g.name for g in fam.groups]
    if not isinstance(depth, Mapping) or set(depth) != set(groups):
        raise RecipeError(f"a {fam.title} recipe needs 'depth: {{{', '.join(f'{g}: N' for g in groups)}}}'")
    depths = tuple((g, int(depth[g])) for g in groups)
    n_blocks = sum(n for _, n in depths)
    blocks, default = d.get("blocks"), d.get("default")
    if isinstance(blocks, Sequence) and not isinstance(blocks, str):
        types = [str(t) for t in blocks]
    elif isinstance(blocks, Mapping) or blocks is None:
        slots: list[str | None] = [None if default is None else str(default)] * n_blocks
        for spec, qtype in (blocks or {}).items():
            for b in parse_blocks(spec, n_blocks):
                slots[b] = str(qtype)
        if missing := [b for b, t in enumerate(slots) if t is None]:
            raise RecipeError(f"blocks {missing} have no type: list them or give a 'default'")
        types = [t for t in slots if t is not None]
    else:
        raise RecipeError("'blocks' must be a list (one type per block) or a mapping of ranges to types")
    return Recipe(tuple(t.upper() for t in types), fam.name, depths, str(d.get("name", "")),
                  dict(d.get("notes") or {}))


def _recipe_family(d: Mapping[str, Any]) -> type[Family]:
    """The family a recipe names: ``family``; recipes from before families name none (or the
    GGUF ``arch`` of the one family there was)."""
    try:
        if "family" in d:
            return family(str(d["family"]))
        return legacy_family(d.get("arch"))
    except ArchitectureError as e:
        raise RecipeError(str(e)) from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    return load_document(path, yaml.safe_load, yaml.YAMLError, "not valid YAML", recipe_from_dict, RecipeError)


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as YAML: what a recipe file holds and what a GGUF records in ``mxgguf.recipe``."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    header = f"# {recipe.name or 'mx GGUF recipe'}: one GGUF type per block (see recipes/README.md)\n"
    atomic_write_text(Path(path), header + recipe_yaml(recipe))
