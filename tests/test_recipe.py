from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quant.models import detect
from quant.recipe import Recipe, RecipeError, load_recipe, parse_blocks, recipe_from_dict, save_recipe
from quant.tensor_plan import average_bpw, block_params, output_name, plan_tensors, tensor_type
from flux_models import FLUX1_DEV, TINY

ARCH = detect(TINY.shapes())  # 2 double + 4 single


def test_list_and_ranges_agree() -> None:
    as_list = recipe_from_dict({"depth": {"double": 2, "single": 4},
                                "blocks": ["Q8_0", "Q8_0", "Q6_K", "Q4_K", "Q4_K", "Q4_K"]})
    as_ranges = recipe_from_dict({"depth": {"double": 2, "single": 4}, "default": "q4_k",
                                  "blocks": {"0-1": "Q8_0", 2: "Q6_K"}})
    assert as_list.types == as_ranges.types


def test_parse_blocks() -> None:
    assert parse_blocks("0-2, 4", 57) == [0, 1, 2, 4]
    with pytest.raises(RecipeError, match="outside 0..56"):
        parse_blocks("50-57", 57)
    with pytest.raises(RecipeError, match="bad block range"):
        parse_blocks("a-b", 57)


@pytest.mark.parametrize("data, message", [
    ({"depth": {"double": 2, "single": 4}, "blocks": ["Q8_0"] * 5 + ["Q7_K"]}, "block 5: unknown type 'Q7_K'"),
    ({"depth": {"double": 2, "single": 4}, "blocks": {"0-9": "Q8_0"}}, "outside 0..5"),
    ({"depth": {"double": 2, "single": 4}, "blocks": {"0-2": "Q8_0"}}, r"blocks \[3, 4, 5\] have no type"),
    ({"depth": {"double": 2, "single": 4}, "blocks": ["Q8_0"] * 5}, "5 block types for 2 double \\+ 4 single"),
    ({"blocks": ["Q8_0"]}, "depth"),
    ({"depth": {"double": 1, "single": 0}, "blocks": ["Q8_0"], "colour": 1}, "unknown recipe keys"),
    ({"depth": {"double": 1, "single": 0}, "blocks": ["Q8_0"], "arch": "sd3"}, "arch 'sd3' is not 'flux'"),
    ({"family": "sd3", "depth": {"blocks": 1}, "blocks": ["Q8_0"]}, "unknown model family 'sd3'"),
    (["Q8_0"], "a YAML mapping"),
])
def test_bad_recipes(data: object, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


def test_depth_mismatch_is_refused() -> None:
    r = Recipe.uniform(FLUX1_DEV, "Q8_0")
    with pytest.raises(RecipeError, match="19 double \\+ 38 single blocks, the model has 2 double \\+ 4 single"):
        plan_tensors(ARCH, TINY.shapes(), r)


def test_round_trip(tmp_path: Path) -> None:
    r = Recipe.for_model(TINY, ("Q8_0", "Q6_K", "Q5_K", "IQ4_XS", "Q4_K", "Q2_K"), name="t", notes={"cost": 1.5})
    save_recipe(r, tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml") == r
    (tmp_path / "bad.yaml").write_text("blocks: [\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_plan_policy_and_bpw() -> None:
    shapes = TINY.shapes()
    plan = plan_tensors(ARCH, shapes, Recipe.uniform(ARCH, "Q8_0"))
    by_key = {t.key: t for t in plan}
    assert by_key["double_blocks.0.img_attn.qkv.weight"].qtype == "Q8_0"
    assert by_key["double_blocks.0.img_attn.qkv.bias"].qtype == "F32"
    assert by_key["single_blocks.3.norm.key_norm.scale"].qtype == "F32"
    assert by_key["final_layer.linear.weight"].qtype == "F32"
    assert by_key["txt_in.weight"].qtype == "F32"
    bits = sum(t.numel * (8.5 if t.qtype == "Q8_0" else 32) for t in plan)
    assert average_bpw(plan) == pytest.approx(bits / sum(t.numel for t in plan), rel=1e-12)
    assert block_params(plan, ARCH.n_blocks) == [36 * 256 * 256] * 2 + [15 * 256 * 256] * 4


def test_flux1_dev_bpw_matches_published_size() -> None:
    shapes = FLUX1_DEV.shapes()
    arch = detect(shapes)
    plan = plan_tensors(arch, shapes, Recipe.uniform(arch, "Q8_0"))
    params = sum(t.numel for t in plan)
    assert params == 11_901_408_320  # FLUX.1-dev
    # Q8_0 blocks plus F32 for the rest: 8.5 bits on 11.834 B params, 32 on 0.067 B
    assert average_bpw(plan) == pytest.approx((11_834_228_736 * 8.5 + 67_179_584 * 32) / params)


def test_row_fallback() -> None:
    assert tensor_type("Q4_K", (64, 3072)) == "Q4_K"
    assert tensor_type("Q4_K", (64, 96)) == "Q5_0"
    assert tensor_type("Q6_K", (64, 96)) == "Q8_0"
    assert tensor_type("Q8_0", (64, 48)) == "F16"


def test_output_name() -> None:
    assert output_name("flux1-dev.safetensors", 6.93) == "flux1-dev_mx6_9.gguf"
    assert output_name("/models/my.model.v2.safetensors", 5.15) == "my.model.v2_mx5_2.gguf"
    assert output_name("flux1-schnell", 12.04) == "flux1-schnell_mx12_0.gguf"


def test_recipe_yaml_is_readable(tmp_path: Path) -> None:
    save_recipe(Recipe.uniform(ARCH, "Q5_K"), tmp_path / "u.yaml")
    text = (tmp_path / "u.yaml").read_text()
    assert text.startswith("# uniform Q5_K")
    assert yaml.safe_load(text)["blocks"] == ["Q5_K"] * 6
