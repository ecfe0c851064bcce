"""The command line as a user runs it: ``python -m quant ...`` (in this process, but for the demo)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]




def test_convert_type_then_inspect(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    r = run_cli("convert", str(tiny_checkpoint), "--type", "Q4_K", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "bits/param" in r.stdout
    r = run_cli("inspect", str(out), "--json")
    summary = json.loads(r.stdout)
    assert summary["blocks"] == ["Q4_K"] * 6
    assert run_cli("inspect", str(out)).stdout.splitlines()[1] == "  blocks 0-5: Q4_K"


def test_convert_recipe_default_name(tiny_checkpoint: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("depth: {double: 2, single: 4}\ndefault: Q5_K\nblocks: {'0-1': Q8_0}\n")
    r = run_cli("convert", str(tiny_checkpoint), "--recipe", str(recipe))
    assert r.returncode == 0, r.stderr
    made = [p.name for p in tmp_path.glob("*.gguf")]
    assert len(made) == 1 and made[0].startswith("tiny-flux_mx") and made[0].endswith(".gguf")
    again = run_cli("convert", str(tiny_checkpoint), "--recipe", str(recipe))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    r = run_cli("convert", str(tmp_path / "missing.safetensors"), "--type", "Q8_0")
    assert r.returncode == 2 and r.stderr.startswith("error: checkpoint") and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("depth: {double: 2, single: 4}\nblocks: [Q8_0]\n")
    (tmp_path / "x.safetensors").write_bytes(b"\x00")
    r = run_cli("convert", str(tmp_path / "x.safetensors"), "--recipe", str(bad))
    assert r.returncode == 2 and "1 block types for 2 double + 4 single blocks" in r.stderr
    r = run_cli("convert", str(tmp_path / "x.safetensors"), "--type", "Q8_0")
    assert r.returncode == 2 and "not a readable safetensors file" in r.stderr


def test_demo(tmp_path: Path) -> None:
    """As the README runs it: ``python -m quant`` in a process of its own (the other tests call main)."""
    r = subprocess.run([sys.executable, "-m", "quant", "demo", "--dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "blocks 0-" in r.stdout or "block 0:" in r.stdout
    assert len(list(tmp_path.glob("*.gguf"))) == 1


def test_optimize_json_builtin() -> None:
    r = run_cli("optimize", "--costs", "builtin:flux1-dev", "--bpw", "6.9", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["blocks"]) == 57 and out["bpw"] <= 6.9 and out["predicted_cost"] > 0
    r = run_cli("optimize", "--costs", "builtin:flux1-dev", "--bpw", "1.5")
    assert r.returncode == 2 and "out of reach" in r.stderr


def test_costs_then_convert_at_target(tiny_checkpoint: Path, tmp_path: Path) -> None:
    costs = tmp_path / "costs.json"
    r = run_cli("costs", str(tiny_checkpoint), "-o", str(costs), "--types", "Q8_0", "Q4_K", "Q2_K",
            "--resolution", "128")
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", str(tiny_checkpoint), "--bpw", "7.0", "--costs", str(costs), "-o", str(tmp_path / "o.gguf"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(run_cli("inspect", str(tmp_path / "o.gguf"), "--json").stdout)
    assert summary["bpw"] <= 7.0 and set(summary["blocks"]) <= {"Q8_0", "Q4_K", "Q2_K"}
    assert summary["costs"] == str(costs)
    r = run_cli("convert", str(tiny_checkpoint), "--bpw", "7.0", "-o", str(tmp_path / "p.gguf"))
    assert r.returncode == 0 and "no built-in table fits FLUX.1 [dev] (2 double + 4 single blocks" in r.stderr
    assert json.loads(run_cli("inspect", str(tmp_path / "p.gguf"), "--json").stdout)["costs"] == \
        "estimated from the weights"


def test_merge_costs(tmp_path: Path) -> None:
    from test_costs import table

    from quant.costs import load_costs, save_costs

    save_costs(table(value=1.0), tmp_path / "a.json")
    save_costs(table(value=2.0), tmp_path / "b.json")
    save_costs(table(seed=5), tmp_path / "other.json")
    r = run_cli("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert load_costs(tmp_path / "m.json").mean(0, "Q8_0") == pytest.approx(3 / 20)
    r = run_cli("merge", str(tmp_path / "a.json"), str(tmp_path / "other.json"), "-o", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "different models" in r.stderr and not (tmp_path / "x.json").exists()


def test_costs_from_saved_captures(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Saved stack inputs (as Capture Layer Costs writes them) measure the same costs headless
    as sweeping those inputs directly; a capture from another width or family is refused."""
    from quant.models import detect
    from quant.checkpoint import open_safetensors
    from quant.costs import load_costs
    from quant.capture_file import save_capture
    from quant.models.flux1_blocks import ReferenceStack
    from quant.sweep import sweep

    with open_safetensors(tiny_checkpoint) as source:
        stack = ReferenceStack(detect(source.shapes), source)
        inputs = stack.make_inputs(seed=3, width=128, height=128, sigma=0.4)
        direct = sweep(stack, [inputs], ["Q8_0", "Q3_K"])
    block_inputs = lambda i: {"img": i.img, "txt": i.txt, "vec": i.vec, "pe": i.pe}  # noqa: E731  as block 0 took them
    save_capture(tmp_path / "c.safetensors", block_inputs(inputs), {"source": "comfyui", "step": 2, "sigma": 0.4})
    costs = tmp_path / "costs.json"
    r = run_cli("costs", str(tiny_checkpoint), "-o", str(costs), "--types", "Q8_0", "Q3_K",
            "--inputs", str(tmp_path / "c.safetensors"))
    assert r.returncode == 0, r.stderr
    table = load_costs(costs)
    assert table.samples == [{"source": "comfyui", "step": 2, "sigma": 0.4, "capture": "c.safetensors",
                              "dtype": "float32"}]
    for (block, qtype), sse in direct.sse.items():
        assert table.mean(block, qtype) == sse / direct.count[(block, qtype)]

    narrow = type(inputs)(inputs.img[..., :128], inputs.txt[..., :128], inputs.vec[..., :128], inputs.pe)
    save_capture(tmp_path / "narrow.safetensors", block_inputs(narrow), {})
    r = run_cli("costs", str(tiny_checkpoint), "-o", str(costs), "--inputs", str(tmp_path / "narrow.safetensors"))
    assert r.returncode != 0 and "hidden size 128" in r.stderr
    save_capture(tmp_path / "wan.safetensors", {"x": inputs.img, "e": inputs.vec}, {})  # another family's block 0
    r = run_cli("costs", str(tiny_checkpoint), "-o", str(costs), "--inputs", str(tmp_path / "wan.safetensors"))
    assert r.returncode != 0 and "captured on another family" in r.stderr


def test_speed_profile_then_slowdown_budget(tiny_checkpoint: Path, tmp_path: Path) -> None:
    speed, costs = tmp_path / "speed.json", tmp_path / "costs.json"
    r = run_cli("speed", "-o", str(speed), "--model", str(tiny_checkpoint), "--tokens", "16", "--comfyui-gguf",
            str(tmp_path))
    assert r.returncode == 2 and "no ComfyUI-GGUF/dequant.py in" in r.stderr and not speed.exists()
    r = run_cli("speed", "-o", str(speed), "--model", str(tiny_checkpoint), "--tokens", "16")
    assert r.returncode == 0, r.stderr
    assert json.loads(speed.read_text())["device"].startswith("cpu")
    r = run_cli("costs", str(tiny_checkpoint), "-o", str(costs), "--types", "Q8_0", "Q4_K", "Q2_K",
                "--resolution", "64")
    assert r.returncode == 0, r.stderr
    common = ("--costs", str(costs), "--model", str(tiny_checkpoint), "--bpw", "6", "--speed", str(speed))
    r = run_cli("optimize", *common, "--pareto", "4", "--json")
    assert r.returncode == 0, r.stderr
    frontier = json.loads(r.stdout)
    slowdowns = [f["predicted_slowdown"] for f in frontier]
    assert slowdowns == sorted(slowdowns) and all(f["bpw"] <= 6 for f in frontier)
    fastest = frontier[0]
    r = run_cli("optimize", *common, "--max-slowdown", str(fastest["predicted_slowdown"] + 1e-9), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predicted_slowdown"] <= fastest["predicted_slowdown"] + 1e-9
    out = tmp_path / "fast.gguf"
    r = run_cli("convert", str(tiny_checkpoint), "--bpw", "6", "--costs", str(costs), "--speed", str(speed),
            "--max-slowdown", str(fastest["predicted_slowdown"] + 1e-9), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "predicted step time" in r.stdout
    budgeted = json.loads(run_cli("optimize", *common, "--max-slowdown", str(fastest["predicted_slowdown"] + 1e-9),
                              "--json").stdout)
    assert json.loads(run_cli("inspect", str(out), "--json").stdout)["blocks"] == budgeted["blocks"]
    r = run_cli("optimize", *common[:-2], "--pareto")
    assert r.returncode == 2 and "--pareto needs --speed" in r.stderr
    r = run_cli("optimize", *common, "--max-slowdown", "1.0")
    assert r.returncode == 2 and "cannot both be met" in r.stderr


def test_optimize_for_a_named_model() -> None:
    """A named full-size model plans without its checkpoint; a table of another family is refused
    saying what each is."""
    r = run_cli("optimize", "--costs", "builtin:flux1-dev", "--model", "flux1-dev", "--bpw", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bpw"] <= 5
    r = run_cli("optimize", "--costs", "builtin:flux1-dev", "--model", "wan2.2-14b", "--bpw", "5")
    assert r.returncode == 2 and "they are for FLUX.1 [dev] (19 double + 38 single blocks" in r.stderr
    assert "this model is Wan T2V (40 blocks, dim 5120" in r.stderr


@pytest.mark.parametrize("family", ["wan", "qwen_image"])
def test_headless_costs_of_other_families_point_to_capture(family: str, tmp_path: Path) -> None:
    """Headless costs need the pack's reference blocks (FLUX.1's): for another family the command
    says where its costs are measured, and writes nothing."""
    from safetensors.torch import save_file

    from quant.models import FAMILIES
    from quant.synthetic import random_state_dict

    src = tmp_path / f"{family}.safetensors"
    save_file(random_state_dict(FAMILIES[family].model(), seed=1), str(src))
    for command in ("costs", "imatrix"):
        r = run_cli(command, str(src), "-o", str(tmp_path / f"out-{command}"))
        assert r.returncode != 0 and "measured in ComfyUI, with the Capture Layer Costs node" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
