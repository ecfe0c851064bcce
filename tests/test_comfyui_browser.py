"""The pack's canvas panels in the real ComfyUI page, in headless Chromium (``browser_panels.js``
drives it through playwright-core). Skipped, saying why, where ComfyUI, Chromium, Node or
playwright-core is missing (``MXH_WITH_CHROMIUM=1`` in the rig's setup.sh installs the last two)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import save_file

from comfyui_rig import ComfyServer, WorkflowError, loader, quantize
from quant import codecs
from quant.costs import load_costs, resolve_costs
from quant.optimize import Target, optimize, pareto
from quant.plan import plan
from quant.speed import load_speed
from quant.synthetic import random_state_dict
from flux_models import TINY, TINY_TYPES, midway_bpw

pytestmark = pytest.mark.comfy

HERE = Path(__file__).resolve().parent
PLAYWRIGHT_DIRS = [os.environ.get("MXGGUF_PLAYWRIGHT_CORE", ""),
                   str(Path.home() / ".cache" / "mxh" / "ui" / "node_modules" / "playwright-core")]


def browser_tools() -> tuple[str, str, str]:
    """(node, chromium, playwright-core folder), or skip naming what is missing."""
    node, chromium = shutil.which("node"), os.environ.get("MXGGUF_CHROMIUM") or shutil.which("chromium")
    playwright = next((d for d in PLAYWRIGHT_DIRS if d and Path(d, "package.json").is_file()), None)
    missing = [what for what, found in (("node", node), ("chromium", chromium), ("playwright-core", playwright))
               if not found]
    if missing:
        pytest.skip(f"browser test skipped: {', '.join(missing)} not found (run the rig's setup.sh with "
                    f"MXH_WITH_CHROMIUM=1, or set MXGGUF_PLAYWRIGHT_CORE / MXGGUF_CHROMIUM)")
    return node, chromium, playwright


def run_script(comfy: ComfyServer, script: str, *args: str) -> dict:
    """``node tests/<script> URL PLAYWRIGHT_DIR ARGS...``'s JSON line (skips where a tool is missing)."""
    node, chromium, playwright = browser_tools()
    r = subprocess.run([node, str(HERE / script), comfy.url, playwright, *args], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "MXGGUF_CHROMIUM": chromium})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_quantize_panel_shows_the_plan_the_cli_computes(comfy: ComfyServer) -> None:
    (comfy.base / "models" / "mxgguf_costs").mkdir(parents=True, exist_ok=True)
    question = {"costs": "builtin:flux1-dev", "target": "bits per parameter", "value": 4.5,
                "types": "Q8_0, Q6_K, Q5_K, Q4_K, Q3_K", "max_slowdown": 0, "capture_costs": "browser-costs"}
    seen = run_script(comfy, "browser_panels.js", json.dumps(question))
    expected = plan(resolve_costs("builtin:flux1-dev"), Target.of(bpw=4.5), codecs.parse_type_list(question["types"]))
    shown = seen["first"]
    assert shown["plan"]["blocks"] == expected["blocks"] and shown["bars"] == 57
    assert f"{expected['bpw']:.3f} bits per parameter" in shown["text"]
    assert f"{expected['size_bytes'] / 1e9:.2f} GB ({expected['size_bytes'] / 2**30:.2f} GiB)" in shown["text"]
    assert f"predicted cost {expected['predicted_cost']:.4g}"[:20] in shown["text"]
    assert "fits " + "/".join(str(c) for c in expected["fits_cards_gb"]) + " GB cards" in shown["text"]
    assert seen["after_change"][0] >= seen["enlarged"][0] and seen["after_change"][1] >= seen["enlarged"][1]
    assert "example_mx4_5.gguf" in seen["reopened_text"] and "bits per parameter" in seen["reopened_plan"]
    assert "no samples yet" in seen["capture_text"]


def test_speed_budget_on_the_canvas_is_what_quantize_meets(comfy: ComfyServer, tiny: str, tiny_costs: str) -> None:
    """With a kept speed profile, a budget set on the canvas shows the plan (types per block,
    predicted step time) that Quantize, queued from the page, then chooses and reports (issue 22).

    On this CPU the tiny model's block forwards dwarf its dequantization (its slowdowns span
    1.015-1.018, finer than the widget's 0.05 steps), so the kept profile's block times are
    scaled down as a GPU's matmuls are, until the unbudgeted plan predicts 2x: a budget between
    that and the fastest plan binds, and a panel that drops the budget shows another plan."""
    browser_tools()
    bpw = round(midway_bpw(TINY, "Q4_K", "Q8_0"), 1)  # as the value widget (step 0.1) holds it
    comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw, TINY_TYPES),  # keeps a profile
               "chart": {"class_type": "PreviewImage", "inputs": {"images": ["quant", 3]}}})
    kept_folder = comfy.base / "models" / "mxgguf_costs"
    (kept,) = [p for p in kept_folder.glob("*.speed.json") if load_speed(p).provenance["model"] == TINY.describe()]
    measured = kept.read_text()
    shapes, types = TINY.shapes(), codecs.parse_type_list(TINY_TYPES)
    costs = load_costs(kept_folder / tiny_costs).costs()
    free = optimize(TINY, shapes, costs, Target(bpw=bpw), types, speed=load_speed(kept))
    gpu_like = json.loads(measured)
    gpu_like["block_seconds"] = {g: s * (free.predicted_slowdown - 1) for g, s in gpu_like["block_seconds"].items()}
    try:
        kept.write_text(json.dumps(gpu_like))
        speed = load_speed(kept)
        fastest = pareto(TINY, shapes, costs, Target(bpw=bpw), speed, types, points=2)[0]
        budget = math.ceil(fastest.predicted_slowdown * 20) / 20  # on the widget's 0.05 steps
        want = optimize(TINY, shapes, costs, Target(bpw=bpw), types, speed=speed, max_slowdown=budget)
        assert want.types != optimize(TINY, shapes, costs, Target(bpw=bpw), types, speed=speed).types
        question = {"unet_name": tiny, "costs": tiny_costs, "target": "bits per parameter", "value": bpw,
                    "types": TINY_TYPES, "max_slowdown": budget}
        seen = run_script(comfy, "browser_budget.js", json.dumps(question))
    finally:  # the measured profile, for the tests after this one
        kept.write_text(measured)
    shown, summary = seen["shown"], seen["summary"]
    assert f"max_slowdown={budget:g}" in shown["asked"], shown["asked"]
    assert shown["plan"]["blocks"] == list(want.types)
    assert shown["plan"]["predicted_slowdown"] == pytest.approx(want.predicted_slowdown)
    step_time = f"predicted step time {want.predicted_slowdown:.2f}x"
    assert step_time in shown["text"] and step_time in summary and f"at most {budget:g}x" in summary
    assert "blocks: " + " ".join(want.types) in summary


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))


def test_example_workflows_validate_against_the_server(comfy: ComfyServer) -> None:
    """Each example, opened in the page and turned into the prompt Run sends, is accepted by
    /prompt with its model (a random FLUX.1 in the stock layout's names; Wan's names only) and its
    companion files in place."""
    browser_tools()  # skipped before any file is made where the browser is missing
    assert [p.name for p in EXAMPLES] == ["capture_quantize_save.json", "quantize_flux_builtin_costs.json",
                                          "quantize_wan22_experts_estimated_costs.json"]
    save_file(random_state_dict(TINY, seed=3), str(comfy.models / "flux1-dev.safetensors"))
    for expert in ("high", "low"):  # validation lists names; nothing here loads them
        (comfy.models / f"wan2.2_t2v_{expert}_noise_14B_fp16.safetensors").touch()
    for folder, name in (("text_encoders", "clip_l.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
                         ("vae", "ae.safetensors")):  # validation lists names; nothing here loads them
        (comfy.base / "models" / folder).mkdir(parents=True, exist_ok=True)
        (comfy.base / "models" / folder / name).touch()
    prompts = run_script(comfy, "browser_examples.js", "prompts", *map(str, EXAMPLES))
    for name, prompt in prompts.items():
        types = sorted(n["class_type"] for n in prompt.values())
        assert "MxMixedGGUFQuantize" in types and "MxSaveMxGGUF" in types, name
        prompt_id = comfy.queue(prompt)  # WorkflowError with ComfyUI's message if refused
        with contextlib.suppress(WorkflowError):  # runs into the placeholder files: not this test's point
            comfy.wait(prompt_id)
