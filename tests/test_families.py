"""Every family the pack knows: recognized from its own layout and no other, its config read back
from its shapes, its blocks numbered in forward order, its named full-size models as published."""
from __future__ import annotations

import math

import pytest

from quant.models import (COMFY_PREFIX, FAMILIES, NAMED_CONFIGS, ArchitectureError, Model, detect, from_fingerprint,
                          named_model)
from quant.recipe import Recipe, recipe_from_dict
from quant.tensor_plan import plan_tensors

TINY = {name: Model(fam, fam.tiny) for name, fam in FAMILIES.items()}
# Published parameter counts (model cards, reference configs), to the stated precision in billions.
PUBLISHED_B = {"flux1-dev": 11.9, "flux1-schnell": 11.9, "chroma": 8.9, "flux2-dev": 32.2, "flux2-klein-4b": 3.9,
               "flux2-klein-9b": 9.1, "hidream-i1": 17.1, "lumina2": 2.6, "qwen-image": 20.4, "qwen-image-edit": 20.4,
               "wan2.1-t2v-14b": 14.3, "wan2.1-t2v-1.3b": 1.4, "wan2.1-i2v-14b": 16.4, "wan2.1-flf2v-14b": 16.4,
               "wan2.2-14b": 14.3, "wan2.2-i2v-14b": 14.3, "wan2.2-5b": 5.0, "z-image": 6.2,
               "flux1-stock": 1.3}  # FLUX.1 [dev]'s widths at 2 + 4 blocks: the tests' stock-width model
ARCH_STRINGS = {"flux", "qwen_image", "wan", "hidream", "lumina2"}  # among ComfyUI-GGUF's loader's


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recognized_by_its_own_layout_only(name: str) -> None:
    model = TINY[name]
    shapes = model.shapes()
    assert [f.name for f in FAMILIES.values() if f.recognizes(shapes)] == [name]
    assert detect(shapes) == model
    prefixed = detect({COMFY_PREFIX + k: v for k, v in shapes.items()})
    assert prefixed.config == model.config and prefixed.prefix == COMFY_PREFIX
    assert from_fingerprint(model.fingerprint()) == model
    assert model.family.gguf_arch in ARCH_STRINGS


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_models_as_published(name: str) -> None:
    model = named_model(name)
    shapes = model.shapes()
    assert detect(shapes) == model
    assert round(sum(math.prod(s) for s in shapes.values()) / 1e9, 1) == PUBLISHED_B[name]
    decided = [k for k, s in shapes.items() if model.is_quantizable(k, s)]
    assert all(shapes[k][1] % 256 == 0 for k in decided)  # every K-quant fits: no fallback types
    assert sum(math.prod(shapes[k]) for k in decided) > 0.9 * sum(math.prod(s) for s in shapes.values())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_blocks_in_forward_order(name: str) -> None:
    model = TINY[name]
    shapes = model.shapes()
    assert len(model.depths) == len(model.family.groups) and model.n_blocks == sum(model.depths.values())
    names = [model.block_name(b) for b in range(model.n_blocks)]
    assert len(set(names)) == model.n_blocks
    owners = {model.block_of(k) for k in shapes} - {None}
    assert owners == set(range(model.n_blocks))  # every block owns tensors, and nothing else claims one
    for b, block in enumerate(names):
        assert all(model.block_of(k) == b for k in shapes if k.startswith(block + "."))
    with pytest.raises(IndexError):
        model.block_name(model.n_blocks)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recipe_round_trip_and_plan(name: str) -> None:
    model = TINY[name]
    recipe = Recipe.for_model(model, [("Q8_0", "Q4_K")[b % 2] for b in range(model.n_blocks)], name="alternating")
    assert recipe_from_dict(recipe.to_dict()) == recipe
    plan = plan_tensors(model, model.shapes(), recipe)
    assert {t.qtype for t in plan if t.decided} == {"Q8_0", "Q4_K"}
    other = next(m for n, m in TINY.items() if n != name)
    with pytest.raises(ValueError, match=f"recipe alternating is for {model.family.title}"):
        plan_tensors(other, other.shapes(), recipe)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_incomplete_or_foreign_tensors_are_refused(name: str) -> None:
    shapes = TINY[name].shapes()
    last_block_key = next(k for k in reversed(shapes) if TINY[name].block_of(k) == TINY[name].n_blocks - 1)
    with pytest.raises(ArchitectureError, match="incomplete|missing"):
        detect({k: v for k, v in shapes.items() if k != last_block_key})
    with pytest.raises(ArchitectureError, match="such as lora_unet_extra.weight"):
        detect({**shapes, "lora_unet_extra.weight": (4, 4)})
    wrong = dict(shapes)
    wrong[last_block_key] = tuple(s + 1 for s in shapes[last_block_key])
    with pytest.raises(ArchitectureError, match="has shape"):
        detect(wrong)
