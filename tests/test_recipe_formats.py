from __future__ import annotations

from pathlib import Path

import pytest

from flux_models import FLUX1_DEV, flux
from quant.recipe import Recipe, RecipeError
from quant.recipe_formats import from_casts, llama_cpp_tensor_types, pick_configuration, sd_cpp_tensor_type_rules

CASTS = {"casts": [{"castto": "Q5_1", "layers": "0-2, 4"}, {"castto": "Q4_K_S", "layers": "19-56"}]}


def test_import_casts() -> None:
    r = from_casts(CASTS, FLUX1_DEV, name="9_6")
    assert r.types[:5] == ("Q5_1", "Q5_1", "Q5_1", "BF16", "Q5_1")
    assert set(r.types[19:]) == {"Q4_K"} and r.name == "9_6"


@pytest.mark.parametrize("config, message", [
    ({"casts": [{"castto": "Q9_9", "layers": "0"}]}, "unknown type 'Q9_9'"),
    ({"casts": [{"castto": "Q8_0", "layers": "0-99"}]}, "outside 0..56"),
    ({"casts": [{"layers": "0"}]}, "needs 'castto' and 'layers'"),
    ({"cast": []}, "needs 'casts'"),
])
def test_bad_casts(config: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        from_casts(config, FLUX1_DEV)


def test_pick_configuration() -> None:
    assert pick_configuration(CASTS, None) == ("", CASTS)
    named = {"9_6": CASTS, "5_1": CASTS}
    assert pick_configuration(named, "5_1")[0] == "5_1"
    with pytest.raises(RecipeError, match="several configurations; pick one: 9_6, 5_1"):
        pick_configuration(named, None)


def test_exports() -> None:
    r = Recipe.for_model(flux(depth_double=1, depth_single=2), ("Q8_0", "Q6_K", "Q4_K"))
    assert llama_cpp_tensor_types(r) == ["--tensor-type double_blocks\\.0\\.=q8_0",
                                         "--tensor-type single_blocks\\.0\\.=q6_k",
                                         "--tensor-type single_blocks\\.1\\.=q4_k"]
    assert sd_cpp_tensor_type_rules(r).split(",")[1] == "^model\\.diffusion_model\\.single_blocks\\.0\\.=q6_k"


def test_cli_round_trip(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "configurations.yaml").write_text(
        '"9_6":\n  casts:\n    - castto: Q8_0\n      layers: "0-18"\n')
    out = tmp_path / "r.yaml"
    r = subprocess.run([sys.executable, "-m", "quant", "recipe", "import", str(tmp_path / "configurations.yaml"),
                        "-o", str(out)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "quant", "recipe", "export", str(out), "--format", "sd.cpp"],
                       cwd=root, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("=q8_0") == 19 and r.stdout.count("=bf16") == 38
