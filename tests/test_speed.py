"""Speed profiles: measured on a device with the loader's dequantize functions, saved, read back, used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quant import codecs
from quant.models import FAMILIES, detect
from quant.recipe import Recipe
from quant.tensor_plan import plan_tensors
from quant.speed import (PROFILED_TYPES, SpeedError, comfyui_gguf_dequantizer, find_comfyui_gguf, load_speed,
                         measure, save_speed, shape_key, weight_shapes)
from flux_models import TINY

SHAPES = TINY.shapes()


def comfyui_gguf_module():
    from comfyui_rig import find_comfyui

    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"ComfyUI-GGUF's dequantize functions not found: {found}")
    return find_comfyui_gguf([found[0] / "custom_nodes"])


def test_measure_save_load_and_predict(tmp_path: Path) -> None:
    arch = detect(SHAPES)
    seen = []
    profile = measure(arch, SHAPES, "cpu", tokens=32, types=["Q8_0", "Q4_K", "BF16"],
                      progress=lambda done, total: seen.append((done, total)))
    shapes = weight_shapes(arch, SHAPES)
    assert seen[-1][0] == seen[-1][1] == len(shapes) * 4 + 1
    assert profile.dequantizer == "mxgguf" and profile.dtype == "float32" and profile.tokens == 32
    assert set(profile.dequant_seconds) == {shape_key(s) for s in shapes}
    assert all(t > 0 for types in profile.dequant_seconds.values() for t in types.values())
    save_speed(profile, tmp_path / "p.json")
    again = load_speed(tmp_path / "p.json")
    assert again == profile
    plan = plan_tensors(arch, SHAPES, Recipe.uniform(arch, "Q8_0"))
    per_block = again.block_dequant(plan, arch.n_blocks)
    assert again.slowdown(arch, plan) == pytest.approx(1 + sum(per_block) / again.step_seconds(arch))
    assert per_block[0] == pytest.approx(sum(again.dequant(t.shape, "Q8_0") for t in plan
                                              if t.block == 0 and len(t.shape) == 2))
    with pytest.raises(SpeedError, match=r"no time for Q6_K weights of shape \(\d+, \d+\)"):
        again.slowdown(arch, plan_tensors(arch, SHAPES, Recipe.uniform(arch, "Q6_K")))


@pytest.mark.parametrize("family", ["flux2", "hidream", "wan", "z_image"])
def test_every_group_of_a_family_is_timed(family: str) -> None:
    """Families without reference blocks are timed by their blocks' matmuls and an attention:
    each group on its own weights, so a step is the sum over groups, as a plan needs it."""
    model = FAMILIES[family].model()
    shapes = model.shapes()
    profile = measure(model, shapes, "cpu", tokens=16, types=["Q8_0"])
    assert set(profile.block_seconds) == set(model.depths) and min(profile.block_seconds.values()) > 0
    assert profile.provenance["block_times"].startswith("estimated")
    assert profile.step_seconds(model) == pytest.approx(
        sum(n * profile.block_seconds[g] for g, n in model.depths.items()))
    other = FAMILIES["lumina2"].model()
    with pytest.raises(SpeedError, match="measured on another model family"):
        profile.step_seconds(other)


def test_malformed_profiles_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SpeedError, match="bad.json: not JSON"):
        load_speed(bad)
    bad.write_text(json.dumps({"format": "mxgguf-costs/1"}))
    with pytest.raises(SpeedError, match="not a speed profile"):
        load_speed(bad)
    bad.write_text(json.dumps({"format": "mxgguf-speed/1", "device": "x"}))
    with pytest.raises(SpeedError, match="malformed speed profile"):
        load_speed(bad)


def test_comfyui_gguf_dequantizer_reads_what_we_write() -> None:
    """The profile times ComfyUI-GGUF's functions on our bytes: they must decode them to our values
    (else the time is of some other work)."""
    module = comfyui_gguf_module()
    dequantize = comfyui_gguf_dequantizer(module)
    w = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    for qtype in PROFILED_TYPES:
        raw = codecs.quantize(w, qtype)
        ours = codecs.dequantize(raw, qtype, tuple(w.shape))
        theirs = dequantize(raw, qtype, tuple(w.shape), torch.float32)
        # ComfyUI-GGUF computes in float16 (its default dequant dtype): equal to its rounding
        torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=2e-3 * float(w.abs().max()), msg=qtype)


def test_measure_with_comfyui_gguf() -> None:
    module = comfyui_gguf_module()
    arch = detect(SHAPES)
    profile = measure(arch, SHAPES, "cpu", tokens=16, types=["Q5_1", "IQ4_XS"],
                      dequantizer=comfyui_gguf_dequantizer(module), dequantizer_name="ComfyUI-GGUF")
    assert profile.dequantizer == "ComfyUI-GGUF"
    assert min(profile.block_seconds.values()) > 0
