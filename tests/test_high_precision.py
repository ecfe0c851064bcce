"""What a family keeps high precision is planned F32, whatever the recipe asks.

The rules are stated here on their own, not read from the code under test: a tensor stays
F32 if it is not 2-D, holds at most 1024 values (ComfyUI-GGUF's converter keeps both), lies
outside the blocks (embedders, final layers), or is one of the family's named exceptions
(ComfyUI-GGUF's converter's lists, and parameters its loader cannot dequantize on the fly).
"""
from __future__ import annotations

import math

import pytest

from quant import codecs
from quant.models import FAMILIES, Model
from quant.recipe import Recipe
from quant.tensor_plan import plan_tensors

SMALL_TENSOR = 1024
NAMED_EXCEPTIONS: dict[str, tuple[str, ...]] = {"wan": (".modulation",), "hidream": (".ff_i.gate.weight",)}
# Tensors the issue names, each of which must be among the kept ones (in the tiny configs).
NAMED_KEPT = {
    "flux1": ("img_in.weight", "final_layer.linear.weight", "double_blocks.0.img_attn.qkv.bias"),
    "chroma": ("distilled_guidance_layer.in_proj.weight", "distilled_guidance_layer.layers.0.in_layer.weight"),
    "flux2": ("double_stream_modulation_img.lin.weight", "double_stream_modulation_txt.lin.weight",
              "single_stream_modulation.lin.weight"),
    "wan": ("patch_embedding.weight", "blocks.0.modulation", "head.modulation", "time_projection.1.weight"),
    "hidream": ("double_stream_blocks.0.block.ff_i.gate.weight", "single_stream_blocks.0.block.ff_i.gate.weight"),
    "z_image": ("x_pad_token", "cap_pad_token"),
    "qwen_image": ("img_in.weight", "txt_norm.weight", "proj_out.weight"),
    "lumina2": ("x_embedder.weight", "cap_embedder.1.weight"),
}
QTYPES = [t for t in codecs.TYPE_NAMES if t != "F32"]


def must_stay_f32(key: str, shape: tuple[int, ...], in_block: bool, exceptions: tuple[str, ...]) -> bool:
    return (len(shape) != 2 or math.prod(shape) <= SMALL_TENSOR or not in_block
            or any(name in key for name in exceptions))


def test_every_family_is_covered() -> None:
    assert set(NAMED_KEPT) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("qtype", QTYPES)
def test_kept_tensors_are_planned_f32(family: str, qtype: str) -> None:
    model = Model(FAMILIES[family], FAMILIES[family].tiny)
    plan = plan_tensors(model, model.shapes(), Recipe.uniform(model, qtype))
    exceptions = NAMED_EXCEPTIONS.get(family, ())
    kept = {t.key for t in plan if must_stay_f32(t.key, t.shape, t.block is not None, exceptions)}
    assert set(NAMED_KEPT[family]) <= kept and len(kept) < len(plan)
    assert [t.key for t in plan if t.key in kept and t.qtype != "F32"] == []
    assert all(t.qtype != "F32" for t in plan if t.key not in kept)  # the recipe decides the rest
