"""The pack's canvas panels in the real ComfyUI page, in headless Chromium (``browser_panels.js``
drives it through playwright-core). Skipped, saying why, where ComfyUI, Chromium, Node or
playwright-core is missing (``MXH_WITH_CHROMIUM=1`` in the rig's setup.sh installs the last two)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import save_file

from comfyui_rig import ComfyServer, WorkflowError
from quant import codecs
from quant.costs import resolve_costs
from quant.optimize import Target
from quant.plan import plan
from quant.synthetic import random_state_dict
from flux_models import TINY

pytestmark = pytest.mark.comfy

SCRIPT = Path(__file__).resolve().parent / "browser_panels.js"
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


def test_quantize_panel_shows_the_plan_the_cli_computes(comfy: ComfyServer) -> None:
    node, chromium, playwright = browser_tools()
    (comfy.base / "models" / "mxgguf_costs").mkdir(parents=True, exist_ok=True)
    question = {"costs": "builtin:flux1-dev", "target": "bits per parameter", "value": 4.5,
                "types": "Q8_0, Q6_K, Q5_K, Q4_K, Q3_K", "max_slowdown": 0, "capture_costs": "browser-costs"}
    r = subprocess.run([node, str(SCRIPT), comfy.url, playwright, json.dumps(question)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "MXGGUF_CHROMIUM": chromium})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
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


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))


def test_example_workflows_validate_against_the_server(comfy: ComfyServer) -> None:
    """Each example, opened in the page and turned into the prompt Run sends, is accepted by
    /prompt with its model (a random FLUX.1 in the stock layout's names; Wan's names only) and its
    companion files in place."""
    node, chromium, playwright = browser_tools()
    assert [p.name for p in EXAMPLES] == ["capture_quantize_save.json", "quantize_flux_builtin_costs.json",
                                          "quantize_wan22_experts_estimated_costs.json"]
    save_file(random_state_dict(TINY, seed=3), str(comfy.models / "flux1-dev.safetensors"))
    for expert in ("high", "low"):  # validation lists names; nothing here loads them
        (comfy.models / f"wan2.2_t2v_{expert}_noise_14B_fp16.safetensors").touch()
    for folder, name in (("text_encoders", "clip_l.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
                         ("vae", "ae.safetensors")):  # validation lists names; nothing here loads them
        (comfy.base / "models" / folder).mkdir(parents=True, exist_ok=True)
        (comfy.base / "models" / folder / name).touch()
    r = subprocess.run([node, str(SCRIPT.parent / "browser_examples.js"), comfy.url, playwright, "prompts",
                        *map(str, EXAMPLES)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MXGGUF_CHROMIUM": chromium})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    prompts = json.loads(r.stdout.strip().splitlines()[-1])
    for name, prompt in prompts.items():
        types = sorted(n["class_type"] for n in prompt.values())
        assert "MxMixedGGUFQuantize" in types and "MxSaveMxGGUF" in types, name
        prompt_id = comfy.queue(prompt)  # WorkflowError with ComfyUI's message if refused
        with contextlib.suppress(WorkflowError):  # runs into the placeholder files: not this test's point
            comfy.wait(prompt_id)
