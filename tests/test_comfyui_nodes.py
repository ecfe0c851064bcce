"""The pack's three nodes in real ComfyUI workflows (skipped where no ComfyUI is installed):
capture during sampling, quantize + save at a target, load the file with ComfyUI-GGUF."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyui_rig import ComfyServer, Messages, WorkflowError, loader, sample_workflow, sampling, saved_latent
from quant.arch import detect
from quant.costs import load_costs
from quant.recipe import Recipe, average_bpw, plan_tensors
from quant.synthetic import STOCK, TINY, flux_shapes, random_state_dict

pytestmark = pytest.mark.comfy

CAPTURE, QUANTIZE, SAVE = "MxCaptureLayerCosts", "MxMixedGGUFQuantize", "MxSaveMxGGUF"
TINY_TYPES = "Q8_0, Q6_K, Q5_K, Q4_K, Q3_K"
STOCK_SHALLOW = STOCK.__class__(**{**STOCK.__dict__, "depth_double": 1, "depth_single": 1})


def capture(model: list, costs_file: str, types: str, step: int = -1, per_run: int = 1) -> dict:
    return {"class_type": CAPTURE, "inputs": {"model": model, "costs_file": costs_file, "step": step,
                                              "samples_per_run": per_run, "types": types}}


def quantize(model: list, costs: str, bpw: float, types: str = "all") -> dict:
    return {"class_type": QUANTIZE, "inputs": {"model": model, "costs": costs, "target": "bits per parameter",
                                               "value": bpw, "types": types}}


def save(mx: list, model_name: str) -> dict:
    return {"class_type": SAVE, "inputs": {"mx_gguf": mx, "model_name": model_name, "folder": "unet"}}


def midway_bpw(cfg, low: str, high: str) -> float:
    """A target between two uniform types on this model (its embedders make bpw model-specific)."""
    shapes = flux_shapes(cfg)
    arch = detect(shapes)
    lo, hi = (average_bpw(plan_tensors(arch, shapes, Recipe.uniform(arch, t))) for t in (low, high))
    return round((lo + hi) / 2, 2)


def costs_file(comfy: ComfyServer, name: str) -> Path:
    return comfy.base / "models" / "mxgguf_costs" / name


@pytest.fixture(scope="module")
def tiny(comfy: ComfyServer) -> str:
    save_file(random_state_dict(TINY, seed=11), str(comfy.models / "nodes-tiny.safetensors"))
    return "nodes-tiny.safetensors"


@pytest.fixture(scope="module")
def tiny_costs(comfy: ComfyServer, tiny: str) -> str:
    """Costs measured by Capture on the tiny model, in models/mxgguf_costs."""
    comfy.run({"load": loader(tiny), "capture": capture(["load", 0], "tiny-costs", TINY_TYPES),
               **sampling(["capture", 0], 1, "nodes/costs")})
    return "tiny-costs.json"


def test_nodes_registered_with_v3_schema(comfy: ComfyServer) -> None:
    info = comfy.object_info()
    names = {CAPTURE: "Capture Layer Costs", QUANTIZE: "Mixed GGUF Quantize", SAVE: "Save mx GGUF"}
    for node, display in names.items():
        assert info[node]["display_name"] == display
        assert info[node]["category"] == "mxgguf"
        for section in ("required", "optional"):
            for name, spec in info[node]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
    assert "builtin:flux1-dev" in info[QUANTIZE]["input"]["required"]["costs"][1]["options"]
    assert any(e.endswith("/mxgguf.js") for e in comfy.get("/extensions"))


def test_capture_keeps_latents_identical_and_costs_grow(comfy: ComfyServer, tiny: str) -> None:
    path = costs_file(comfy, "tiny-grow.json")
    for run, seed in enumerate((21, 22), start=1):
        plain = comfy.run(sample_workflow(tiny, "safetensors", seed=seed, prefix=f"nodes/plain{seed}"))
        wf = {"load": loader(tiny), "capture": capture(["load", 0], "tiny-grow", TINY_TYPES),
              **sampling(["capture", 0], seed, f"nodes/capture{seed}")}
        captured = comfy.run(wf)
        assert torch.equal(saved_latent(comfy, plain), saved_latent(comfy, captured))
        table = load_costs(path)
        assert len(table.samples) == run and table.samples[-1]["source"] == "comfyui"
        assert table.samples[-1]["seed"] == seed and 0 <= table.samples[-1]["step"] < 4
        assert all(n > 0 for counts in table.count for n in counts)
    costs = table.costs()
    assert all(costs[b]["Q3_K"] > costs[b]["Q8_0"] for b in range(table.n_blocks))


def test_quantize_output_equals_saved_file_and_file_samples(comfy: ComfyServer, tiny: str, tiny_costs: str) -> None:
    bpw = midway_bpw(TINY, "Q4_K", "Q8_0")
    wf = {"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw),
          "savegguf": save(["quant", 0], "nodes-tiny"), **sampling(["quant", 1], 31, "nodes/inline")}
    entry = comfy.run(wf)
    text = entry["outputs"]["savegguf"]["text"][0]
    written = Path(text.splitlines()[0])
    assert written.parent == comfy.unet and written.name.startswith("nodes-tiny_mx")
    summary = entry["outputs"]["quant"]["text"][0]
    assert float(summary.split()[0]) <= bpw
    inline = saved_latent(comfy, entry)
    f32 = saved_latent(comfy, comfy.run(sample_workflow(written.name, "gguf-f32", seed=31, prefix="nodes/f32")))
    assert torch.equal(inline, f32), f"max abs diff {(inline - f32).abs().max().item()}"
    plain = saved_latent(comfy, comfy.run(sample_workflow(written.name, "gguf", seed=31, prefix="nodes/gguf")))
    assert torch.isfinite(plain).all() and plain.std() > 0.1
    # quantizing again to the same size never overwrites: the new file gets a suffix
    again = comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw, TINY_TYPES),
                       "savegguf": save(["quant", 0], "nodes-tiny")})
    second = Path(again["outputs"]["savegguf"]["text"][0].splitlines()[0])
    assert second.name == written.name.replace(".gguf", "_2.gguf")
    assert written.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "sub/dir", "..", ".hidden"])
def test_hostile_names_are_refused(comfy: ComfyServer, tiny: str, tiny_costs: str, name: str) -> None:
    before = sorted(p.relative_to(comfy.base) for p in comfy.base.rglob("*") if p.is_file())
    with pytest.raises(WorkflowError, match="refused"):
        comfy.run({"load": loader(tiny), "capture": capture(["load", 0], name, "Q8_0"),
                   **sampling(["capture", 0], 2, "nodes/hostile")})
    with pytest.raises(WorkflowError, match="refused"):
        comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, midway_bpw(TINY, "Q4_K", "Q8_0")),
                   "savegguf": save(["quant", 0], name)})
    after = sorted(p.relative_to(comfy.base) for p in comfy.base.rglob("*") if p.is_file())
    assert [p for p in after if p not in before and p.parts[0] != "output"] == []
