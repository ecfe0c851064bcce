"""The pack's three nodes in real ComfyUI workflows (skipped where no ComfyUI is installed):
capture during sampling, quantize + save at a target, load the file with ComfyUI-GGUF."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_rig import (PACK_ROOT, ComfyServer, Messages, WorkflowError, capture, loader, quantize, sample_workflow,
                         sampling, save, saved_latent)
from quant import codecs
from flux_models import STOCK, TINY, TINY_TYPES, flux, midway_bpw
from quant.models import detect
from quant.costs import accumulate, load_costs
from quant.imatrix import load_imatrix
from quant.optimize import Target, optimize, pareto
from quant.speed import load_speed
from quant.synthetic import random_state_dict
from tests.cli_runner import run_cli

pytestmark = pytest.mark.comfy

CAPTURE, QUANTIZE, SAVE = "MxCaptureLayerCosts", "MxMixedGGUFQuantize", "MxSaveMxGGUF"
STOCK_SHALLOW = flux(STOCK, depth_double=1, depth_single=1)


def costs_file(comfy: ComfyServer, name: str) -> Path:
    return comfy.base / "models" / "mxgguf_costs" / name


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
    # every step of both runs went into the importance matrix beside the costs, for every block weight
    imatrix = load_imatrix(costs_file(comfy, "tiny-grow.imatrix.gguf"))
    shapes = TINY.shapes()
    arch = detect(shapes)
    assert set(imatrix.sums) == {k for k, s in shapes.items() if arch.is_quantizable(k, s)}
    assert imatrix.chunk_count == 8 and imatrix.datasets == ["ComfyUI sampling"]
    tokens = (64 // 16) ** 2  # image tokens of a 64x64 sample
    assert imatrix.counts["double_blocks.0.img_attn.qkv.weight"] == 8 * tokens
    assert imatrix.counts["single_blocks.0.linear1.weight"] == 8 * (tokens + 8)  # + the text tokens
    # convert reads it
    out = comfy.base / "tiny-imatrix.gguf"
    r = subprocess.run([sys.executable, "-m", "quant", "convert", str(comfy.models / tiny), "--type", "Q4_K",
                        "--imatrix", str(costs_file(comfy, "tiny-grow.imatrix.gguf")), "-o", str(out)],
                       cwd=PACK_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_imatrix(costs_file(comfy, "tiny-grow.imatrix.gguf")).counts == imatrix.counts


def test_quantize_output_equals_saved_file_and_file_samples(comfy: ComfyServer, tiny: str, tiny_costs: str) -> None:
    options = comfy.object_info(QUANTIZE)[QUANTIZE]["input"]["required"]["costs"][1]["options"]
    assert tiny_costs in options  # the dropdown lists files measured since the server started
    bpw = midway_bpw(TINY, "Q4_K", "Q8_0")
    wf = {"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw),
          "savegguf": save(["quant", 0], "nodes-tiny"), **sampling(["quant", 1], 31, "nodes/inline"),
          "chart": {"class_type": "PreviewImage", "inputs": {"images": ["quant", 3]}}}
    entry = comfy.run(wf)
    assert len(entry["outputs"]["chart"]["images"]) == 1
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


def test_max_slowdown_in_a_real_graph(comfy: ComfyServer, tiny: str, tiny_costs: str) -> None:
    """The node measures the device's speed once, keeps it beside the costs (not offered as costs),
    and with a slowdown budget picks what the optimizer picks with that profile."""
    bpw = midway_bpw(TINY, "Q4_K", "Q8_0")
    free = comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw),
                      "chart": {"class_type": "PreviewImage", "inputs": {"images": ["quant", 3]}}})
    assert "predicted step time" in free["outputs"]["quant"]["text"][0]
    (kept,) = [p for p in costs_file(comfy, "").glob("*.speed.json")  # one per device, family and config
               if load_speed(p).provenance["model"] == TINY.describe()]
    assert kept.name.startswith("cpu-") and "_flux1_" in kept.name
    options = comfy.object_info(QUANTIZE)[QUANTIZE]["input"]["required"]["costs"][1]["options"]
    assert tiny_costs in options and kept.name not in options
    measured_at = kept.stat().st_mtime_ns
    speed = load_speed(kept)
    assert speed.tokens == 4608 and speed.dequantizer == "ComfyUI-GGUF" and speed.dtype == "float32"
    shapes = TINY.shapes()
    arch = detect(shapes)
    costs = load_costs(costs_file(comfy, tiny_costs)).costs()
    fastest = pareto(arch, shapes, costs, Target(bpw=bpw), speed, points=2)[0]
    budget = fastest.predicted_slowdown + 1e-6
    want = optimize(arch, shapes, costs, Target(bpw=bpw), speed=speed, max_slowdown=budget)
    entry = comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw, max_slowdown=budget),
                       "savegguf": save(["quant", 0], "nodes-fast")})
    summary = entry["outputs"]["quant"]["text"][0]
    assert f"at most {budget:g}x" in summary and f"predicted step time {want.predicted_slowdown:.2f}x" in summary
    assert summary.splitlines()[-1] == "blocks: " + " ".join(want.types)
    assert kept.stat().st_mtime_ns == measured_at  # measured once, then kept
    with pytest.raises(WorkflowError, match="cannot both be met"):
        comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw, max_slowdown=1.0),
                   "savegguf": save(["quant", 0], "nodes-never")})
    # the canvas's plan follows the budget with the profile Quantize kept (issue 22)
    status, planned = http_json(comfy, "/mxgguf/plan", costs=tiny_costs, target="bpw", value=bpw, max_slowdown=budget)
    assert status == 200, planned
    assert planned["blocks"] == list(want.types) and planned["predicted_slowdown"] == want.predicted_slowdown
    assert len(planned["block_step_shares"]) == TINY.n_blocks
    assert 1 + sum(planned["block_step_shares"]) == pytest.approx(want.predicted_slowdown)
    status, refused = http_json(comfy, "/mxgguf/plan", costs=tiny_costs, target="bpw", value=bpw, max_slowdown=1.0)
    assert status == 400 and "cannot both be met" in refused["error"]
    status, none_kept = http_json(comfy, "/mxgguf/plan", costs="builtin:flux1-dev", target="bpw", value=6.9,
                                  max_slowdown=2.0)
    assert status == 400 and "queue Mixed GGUF Quantize on this model once" in none_kept["error"], none_kept


def test_quantize_with_the_imatrix_capture_wrote(comfy: ComfyServer, tiny: str, tiny_costs: str) -> None:
    name = tiny_costs.replace(".json", ".imatrix.gguf")  # Capture wrote it beside the costs
    options = comfy.object_info(QUANTIZE)[QUANTIZE]["input"]["optional"]["imatrix"][1]["options"]
    assert options[0] == "none" and name in options
    bpw = midway_bpw(TINY, "Q4_K", "Q8_0")
    wf = {"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, bpw, TINY_TYPES),
          "savegguf": save(["quant", 0], "nodes-imatrix")}
    wf["quant"]["inputs"]["imatrix"] = name
    entry = comfy.run(wf)
    assert f"importance matrix: {name}" in entry["outputs"]["quant"]["text"][0]
    written = Path(entry["outputs"]["savegguf"]["text"][0].splitlines()[0])
    reader = gguf.GGUFReader(written)
    assert reader.get_field("quantize.imatrix.file").contents() == name
    imatrix = load_imatrix(costs_file(comfy, name))
    tensors = {t.name: t for t in reader.tensors}
    key = "double_blocks.0.img_attn.qkv.weight"
    qtype = tensors[key].tensor_type.name
    weight = load_file(str(comfy.models / tiny))[key].float()
    want = codecs.quantize(weight, qtype, imatrix=imatrix.importance(key)).reshape(-1).numpy()
    assert np.array_equal(np.asarray(tensors[key].data).reshape(-1), want)


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
    new = [p for p in after if p not in before and p.parts[0] != "output"]
    assert [p for p in new if not p.name.endswith(".speed.json")] == []  # a first Quantize measures the device


@pytest.fixture(scope="module")
def stock(comfy: ComfyServer) -> str:
    """FLUX.1's real widths (hidden 3072), 1 double + 1 single block: ComfyUI's own detection builds it."""
    save_file(random_state_dict(STOCK_SHALLOW, seed=12), str(comfy.models / "nodes-stock.safetensors"))
    return "nodes-stock.safetensors"


def test_interrupt_during_capture_leaves_costs_valid(comfy: ComfyServer, stock: str) -> None:
    path = costs_file(comfy, "stock-costs.json")
    log_start = len(comfy.log_path.read_text())
    measure = {"load": loader(stock), "capture": capture(["load", 0], "stock-costs", "Q8_0, Q5_0", step=0)}
    comfy.run({**measure, **sampling(["capture", 0], 1, "nodes/stock1", steps=2)})
    before = path.read_bytes()
    plain = saved_latent(comfy, comfy.run(sample_workflow(stock, "safetensors", seed=5, prefix="nodes/sp", steps=2)))

    more_types = "Q5_1, Q4_1, Q4_0, IQ4_NL"  # each (block, type) takes seconds at this width
    messages = Messages(comfy)
    try:
        wf = {"load": loader(stock), "capture": capture(["load", 0], "stock-costs", more_types, step=1),
              **sampling(["capture", 0], 6, "nodes/stock-int", steps=2)}
        prompt = comfy.queue(wf, messages.client_id)
        sweep_total = 2 * 4
        while True:  # the sweep reports on the sampler's node with its own total
            m = messages.next()
            if m and m["type"] == "progress" and m["data"]["max"] == sweep_total and m["data"]["value"] >= 1:
                comfy.interrupt()
                break
    finally:
        messages.close()
    with pytest.raises(WorkflowError, match="interrupted"):
        comfy.wait(prompt)
    assert path.read_bytes() == before  # still the complete table of before, untouched
    assert len(load_costs(path).samples) == 1
    # the weights the sweep swapped were all put back: capture now samples what the plain model did
    again = comfy.run({**measure, **sampling(["capture", 0], 5, "nodes/stock2", steps=2)})
    assert torch.equal(saved_latent(comfy, again), plain)
    assert len(load_costs(path).samples) == 2
    assert "widths from tensors" not in comfy.log_path.read_text()[log_start:]  # detection unpatched


def test_stock_width_quantize_save_and_load(comfy: ComfyServer, stock: str) -> None:
    costs = "stock-costs.json"
    if not costs_file(comfy, costs).exists():
        comfy.run({"load": loader(stock), "capture": capture(["load", 0], "stock-costs", "Q8_0, Q5_0", step=0),
                   **sampling(["capture", 0], 1, "nodes/stock1", steps=2)})
    log_start = len(comfy.log_path.read_text())
    bpw = midway_bpw(STOCK_SHALLOW, "Q5_0", "Q8_0")
    entry = comfy.run({"load": loader(stock), "quant": quantize(["load", 0], costs, bpw, "Q8_0, Q5_0"),
                       "savegguf": save(["quant", 0], "nodes-stock")})
    written = Path(entry["outputs"]["savegguf"]["text"][0].splitlines()[0])
    wf = sample_workflow(written.name, "gguf", seed=7, prefix="nodes/stock-gguf", steps=2)
    wf["report"] = {"class_type": "MxTestModelReport", "inputs": {"model": ["load", 0]}}
    out = comfy.run(wf)
    report = out["outputs"]["report"]["report"][0]
    assert report["model_class"] == "Flux" and report["config"]["hidden_size"] == 3072
    assert "widths from tensors" not in comfy.log_path.read_text()[log_start:]
    latent = saved_latent(comfy, out)
    assert torch.isfinite(latent).all() and latent.std() > 0.1
    comfy.free()


def test_same_costs_in_and_out_of_comfyui(comfy: ComfyServer, tiny: str, tmp_path: Path) -> None:
    """The inputs Capture saved, measured headless on the same checkpoint with the pack's
    reference blocks, give the costs Capture measured on ComfyUI's blocks."""
    wf = {"load": loader(tiny), "capture": capture(["load", 0], "tiny-same", "Q8_0, Q4_K, Q2_K", step=2),
          **sampling(["capture", 0], 41, "nodes/same")}
    wf["capture"]["inputs"]["save_inputs"] = True
    comfy.run(wf)
    saved = sorted((comfy.base / "models" / "mxgguf_costs" / "tiny-same.inputs").glob("*.safetensors"))
    assert [p.name for p in saved] == ["seed41_step2.safetensors"]
    headless = tmp_path / "headless.json"
    r = subprocess.run([sys.executable, "-m", "quant", "costs", str(comfy.models / tiny), "-o", str(headless),
                        "--types", "Q8_0", "Q4_K", "Q2_K", "--inputs", str(saved[0])],
                       cwd=PACK_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    node, cli = load_costs(costs_file(comfy, "tiny-same.json")), load_costs(headless)
    assert cli.samples[0]["step"] == 2 and cli.samples[0]["seed"] == 41
    for b in range(node.n_blocks):
        for t in node.types:
            a, h = node.mean(b, t), cli.mean(b, t)
            assert abs(a - h) <= 1e-3 * a, f"block {b} {t}: ComfyUI {a} vs headless {h}"


def test_samples_of_one_run_cost_the_same_as_one_by_one(comfy: ComfyServer, tiny: str) -> None:
    """samples_per_run 3: one sweep measures the three steps together (one write of the file);
    capturing each of those steps in a run of its own adds up to the same costs. cfg 2: each
    capture is a batch of two (cond and uncond) with its own rotary tables."""
    types = "Q8_0, Q4_K"
    comfy.run({"load": loader(tiny), "capture": capture(["load", 0], "tiny-together", types, per_run=3),
               **sampling(["capture", 0], 61, "nodes/together", cfg=2.0)})
    together = load_costs(costs_file(comfy, "tiny-together.json"))
    steps = sorted(s["step"] for s in together.samples)
    assert len(steps) == 3 and len(set(steps)) == 3
    for step in steps:
        comfy.run({"load": loader(tiny), "capture": capture(["load", 0], "tiny-alone", types, step=step),
                   **sampling(["capture", 0], 61, f"nodes/alone{step}", cfg=2.0)})
    alone = load_costs(costs_file(comfy, "tiny-alone.json"))
    assert sorted(s["step"] for s in alone.samples) == steps
    for b in range(together.n_blocks):
        for j, t in enumerate(together.types):
            a, o = together.sse[b][j], alone.sse[b][alone.types.index(t)]
            assert abs(a - o) <= 1e-4 * o, f"block {b} {t}: together {a} vs one by one {o}"


def test_capture_and_quantize_in_one_graph(comfy: ComfyServer, tiny: str) -> None:
    """Quantize waits for the sampler through 'after', so it reads the costs this run wrote,
    from a file that did not exist when the prompt was queued."""
    assert not costs_file(comfy, "tiny-graph.json").exists()
    wf = {"load": loader(tiny), "capture": capture(["load", 0], "tiny-graph", TINY_TYPES),
          **sampling(["capture", 0], 51, "nodes/graph"),
          "quant": quantize(["load", 0], "tiny-graph.json", midway_bpw(TINY, "Q4_K", "Q8_0")),
          "savegguf": save(["quant", 0], "nodes-graph")}
    wf["quant"]["inputs"]["after"] = ["sample", 0]
    entry = comfy.run(wf)
    assert len(load_costs(costs_file(comfy, "tiny-graph.json")).samples) == 1
    assert Path(entry["outputs"]["savegguf"]["text"][0].splitlines()[0]).name.startswith("nodes-graph_mx")


@pytest.mark.parametrize("how", ["gguf", "fp8"])
def test_quantized_models_are_refused(comfy: ComfyServer, tiny: str, tiny_costs: str, how: str) -> None:
    if how == "gguf":
        entry = comfy.run({"load": loader(tiny), "quant": quantize(["load", 0], tiny_costs, 11.0, "Q8_0"),
                           "savegguf": save(["quant", 0], "nodes-refuse")})
        load = loader(Path(entry["outputs"]["savegguf"]["text"][0].splitlines()[0]).name, "gguf")
        expected = "already GGUF-quantized"
    else:
        load = {"class_type": "UNETLoader", "inputs": {"unet_name": tiny, "weight_dtype": "fp8_e4m3fn"}}
        expected = "float8_e4m3fn"
    with pytest.raises(WorkflowError, match=expected):
        comfy.run({"load": load, "capture": capture(["load", 0], "refused", "Q8_0"),
                   **sampling(["capture", 0], 3, "nodes/refused")})
    with pytest.raises(WorkflowError, match=expected):
        comfy.run({"load": load, "quant": quantize(["load", 0], tiny_costs, 11.0, "Q8_0"),
                   "savegguf": save(["quant", 0], "nodes-refused")})
    assert not costs_file(comfy, "refused.json").exists()


def http_json(comfy: ComfyServer, path: str, **query: object) -> tuple[int, dict]:
    """GET ``path?query`` -> (status, JSON body), 4xx answers included."""
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        return 200, comfy.get(url)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def optimize_json(costs: str, target: str, value: float, types: str) -> dict:
    """``python -m quant optimize --json`` for the same question, in this process."""
    argv = ["optimize", "--costs", costs, f"--{target.replace('_', '-')}", str(value), "--json"]
    if types != "all":
        argv += ["--types", *codecs.parse_type_list(types)]
    ran = run_cli(*argv)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


PLAN_TARGETS = [("bpw", 2.9, "all"), ("bpw", 4.5, "all"), ("bpw", 6.9, "all"), ("bpw", 5.2, "Q8_0, Q5_K, Q4_K"),
                ("size_gb", 6.5, "all"), ("size_gb", 9.5, "all"), ("card_gb", 8, "all"), ("card_gb", 12, "all"),
                ("card_gb", 16, "Q8_0,Q6_K")]


def test_plan_route_equals_optimize_json(comfy: ComfyServer, tiny_costs: str) -> None:
    """The Quantize node's panel asks the server what a target means; the answer is the CLI's."""
    for target, value, types in PLAN_TARGETS:
        status, answer = http_json(comfy, "/mxgguf/plan", costs="builtin:flux1-dev", target=target, value=value,
                                   types=types)
        assert status == 200, answer
        cli = optimize_json("builtin:flux1-dev", target, value, types)
        assert {k: answer[k] for k in cli} == cli, (target, value, types)
        assert len(answer["block_costs"]) == len(cli["blocks"]) == 57
        assert answer["size_gib"] == cli["size_bytes"] / 2**30
        assert answer["shapes"].startswith("FLUX.1 [dev] (19 double + 38 single blocks")
        assert answer["family"] == "flux1" and answer["groups"] == [
            {"name": "double", "first": 0, "blocks": 19}, {"name": "single", "first": 19, "blocks": 38}]
    status, largest = http_json(comfy, "/mxgguf/plan", costs="builtin:flux1-dev", target="card_gb", value=1e308)
    assert status == 200 and largest["predicted_cost"] == 0.0, largest  # at once: the least-cost plan (BF16)
    _, small = http_json(comfy, "/mxgguf/plan", costs="builtin:flux1-dev", target="bpw", value=4.5)
    assert 8 not in small["fits_cards_gb"] and 12 in small["fits_cards_gb"]  # 6.7 GB of data: over 6 GiB
    bpw = midway_bpw(TINY, "Q4_K", "Q8_0")
    status, answer = http_json(comfy, "/mxgguf/plan", costs=tiny_costs, target="bpw", value=bpw)
    assert status == 200, answer
    assert {k: answer[k] for k in ("bpw", "size_bytes", "blocks")} == \
        {k: v for k, v in optimize_json(str(costs_file(comfy, tiny_costs)), "bpw", bpw, "all").items()
         if k in ("bpw", "size_bytes", "blocks")}


@pytest.mark.parametrize("query, message", [
    ({"costs": "builtin:flux1-dev", "target": "bits", "value": 4}, "target must be one of"),
    ({"costs": "builtin:flux1-dev", "target": "bpw", "value": "four"}, "value must be a number"),
    ({"costs": "builtin:flux1-dev", "target": "bpw"}, "missing parameter(s): value"),
    ({"costs": "builtin:flux1-dev", "target": "bpw", "value": 0.8}, "bits per parameter"),
    ({"costs": "builtin:flux1-dev", "target": "bpw", "value": 4, "types": "Q4_K, Q9_Z"}, "unknown type(s) ['Q9_Z']"),
    ({"costs": "no-such-costs.json", "target": "bpw", "value": 4}, "does not exist yet"),
    ({"costs": "../../etc/passwd", "target": "bpw", "value": 4}, "passwd"),
    ({"costs": "builtin:flux1-dev", "target": "size_gb", "value": "inf"}, "positive number"),
    ({"costs": "estimate from the weights", "target": "bpw", "value": 4}, "made from the MODEL when"),
])
def test_plan_route_refuses_bad_questions_with_400(comfy: ComfyServer, query: dict, message: str) -> None:
    status, answer = http_json(comfy, "/mxgguf/plan", **query)
    assert status == 400 and message in answer["error"], answer


def test_costs_route_lists_files_with_samples(comfy: ComfyServer, tiny_costs: str) -> None:
    status, listed = http_json(comfy, "/mxgguf/costs")
    assert status == 200
    by_name = {e["name"]: e for e in listed}
    assert by_name["builtin:flux1-dev"]["samples"] >= 1 and "modified" not in by_name["builtin:flux1-dev"]
    tiny = by_name[tiny_costs]
    assert tiny["samples"] == len(load_costs(costs_file(comfy, tiny_costs)).samples)
    assert tiny["modified"].startswith("20")


def executed_nodes(comfy: ComfyServer, workflow: dict) -> set[str]:
    """The nodes a run executed (not taken from ComfyUI's cache)."""
    entry = comfy.run(workflow)
    cached: set[str] = set()
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_cached":
            cached.update(data["nodes"])
    return set(workflow) - cached


def test_quantize_runs_again_when_its_costs_file_changed(comfy: ComfyServer, tiny: str, tiny_costs: str) -> None:
    """Same graph, same inputs: ComfyUI reuses Quantize's outputs, unless the costs file changed
    (no other graph runs in between: that alone would drop the cached outputs)."""
    path = costs_file(comfy, "tiny-cache.json")
    path.write_bytes(costs_file(comfy, tiny_costs).read_bytes())
    wf = {"load": loader(tiny), "quant": quantize(["load", 0], "tiny-cache.json", midway_bpw(TINY, "Q4_K", "Q8_0")),
          "show": {"class_type": "PreviewAny", "inputs": {"source": ["quant", 2]}}}  # an output: the summary
    assert "quant" in executed_nodes(comfy, wf)
    assert "quant" not in executed_nodes(comfy, wf)
    accumulate(path, load_costs(path))  # as a merge of more samples does: the same costs, a changed file
    assert "quant" in executed_nodes(comfy, wf)
