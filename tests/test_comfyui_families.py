"""Every family's tensor names and shapes are those ComfyUI's own model class has, for the model
ComfyUI's own detection picks from them: each named full-size model, and the tiny models the
tests sample where ComfyUI detects them unaided (skipped without ComfyUI). FLUX.2 and Z-Image are
newer than the test ComfyUI (2025-10): they are checked against their published layouts instead."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from safetensors.torch import save_file

from comfyui_rig import (PACK_ROOT, ComfyServer, capture, loader, quantize, run_in_comfyui, sampling, save,
                         saved_latent)
from quant.costs import FINAL_HIDDEN_STATE, load_costs
from quant.gguf_file import read_summary
from quant.imatrix import load_imatrix
from quant.models import FAMILIES, NAMED_CONFIGS
from quant.recipe import Recipe
from quant.synthetic import random_state_dict
from quant.tensor_plan import average_bpw, plan_tensors
from tests.cli_runner import run_cli

pytestmark = pytest.mark.comfy
# The class ComfyUI's detection must choose, per family.
COMFY_CLASSES = {"flux1": {"Flux", "FluxSchnell"}, "chroma": {"Chroma"}, "qwen_image": {"QwenImage"},
                 "wan": {"WAN21_T2V", "WAN21_I2V", "WAN22_T2V"}, "hidream": {"HiDream"}, "lumina2": {"Lumina2"}}
NEWER_THAN_THE_TEST_COMFYUI = {"flux2", "z_image"}
# ComfyUI reads their widths from the shapes; FLUX.1's and HiDream's it fixes (the tests patch FLUX.1's).
TINY_DETECTED = ["wan", "qwen_image", "chroma", "lumina2"]
ESTIMATE_CHOICE = "estimate from the weights"  # Quantize's costs choice (nodes.common, which imports ComfyUI)
NAMED = sorted(n for n, (fam, _) in NAMED_CONFIGS.items() if fam.name not in NEWER_THAN_THE_TEST_COMFYUI)


@pytest.fixture(scope="module")
def comfy_shapes() -> dict:
    return run_in_comfyui("comfyui_family_shapes.py", PACK_ROOT, *NAMED, *TINY_DETECTED)


@pytest.mark.parametrize("name", NAMED + TINY_DETECTED)
def test_comfyui_builds_our_layout(comfy_shapes: dict, name: str) -> None:
    family = NAMED_CONFIGS[name][0].name if name in NAMED_CONFIGS else name
    got = comfy_shapes[name]
    assert got["class"] in COMFY_CLASSES[family], got
    assert (got["only_ours"], got["only_comfy"], got["shapes"]) == ([], [], []), got


# Families ComfyUI loads a tiny random checkpoint of unaided, and how their latents look.
ROUND_TRIP = {"wan": {"video": True}, "qwen_image": {}, "chroma": {}, "lumina2": {}}
TYPES = "Q8_0, Q6_K, Q4_K"


def random_checkpoint(comfy: ComfyServer, family: str) -> str:
    name = f"family-{family}"
    if not (comfy.models / f"{name}.safetensors").exists():
        save_file(random_state_dict(FAMILIES[family].model(), seed=21), str(comfy.models / f"{name}.safetensors"))
    return name


def quantize_save_and_reload(comfy: ComfyServer, family: str, name: str, costs: str, types: str = TYPES
                             ) -> tuple[str, dict]:
    """Quantize (just above midway between Q4_K and Q8_0: one of a 2-block model's blocks gets
    Q8_0) and Save in one graph, then Unet Loader (GGUF) loads the file and samples the latents
    Quantize's MODEL sampled, bit for bit (dequantized in float32).
    -> (Quantize's summary, the file's summary)."""
    model = FAMILIES[family].model()
    lo, hi = (average_bpw(plan_tensors(model, model.shapes(), Recipe.uniform(model, t))) for t in ("Q4_K", "Q8_0"))
    video = ROUND_TRIP[family].get("video", False)
    entry = comfy.run({"load": loader(f"{name}.safetensors"),
                       "quant": quantize(["load", 0], costs, math.ceil(50 * (lo + hi)) / 100, types),
                       "savegguf": save(["quant", 0], name),
                       **sampling(["quant", 1], 5, f"families/{family}-inline", steps=2, video=video)})
    written = Path(entry["outputs"]["savegguf"]["text"][0].splitlines()[0])
    inline = saved_latent(comfy, entry)
    loaded = comfy.run({"load": loader(written.name, "gguf-f32"),
                        **sampling(["load", 0], 5, f"families/{family}-gguf", steps=2, video=video)})
    from_file = saved_latent(comfy, loaded)
    assert torch.isfinite(inline).all() and inline.std() > 0
    assert torch.equal(inline, from_file), f"max abs diff {(inline - from_file).abs().max().item()}"
    file = read_summary(written)
    written.unlink()  # the next test of this family saves under the same name
    assert file["family"] == family and file["metadata"]["general.architecture"] == FAMILIES[family].gguf_arch
    assert set(file["blocks"]) <= set(types.split(", ")) and len(set(file["blocks"])) > 1
    return entry["outputs"]["quant"]["text"][0], file


@pytest.mark.parametrize("family", sorted(ROUND_TRIP))
def test_quantize_save_load_and_sample(comfy: ComfyServer, family: str) -> None:
    """A random checkpoint in the family's layout, which ComfyUI detects by itself, on costs
    estimated from its weights: quantized, saved, loaded by ComfyUI-GGUF and sampled."""
    summary, file = quantize_save_and_reload(comfy, family, random_checkpoint(comfy, family), ESTIMATE_CHOICE)
    assert "estimated cost" in summary and "an estimate from the weights" in summary
    assert file["costs"] == "estimated from the weights"
    comfy.free()


@pytest.mark.parametrize("family", sorted(ROUND_TRIP))
def test_capture_on_comfyuis_own_forward(comfy: ComfyServer, family: str) -> None:
    """Capture Layer Costs in a real sampling graph of each family: the latents are bit-identical
    to the graph without it; the table holds the family, the measure, a cost per block and type,
    at N + T*N(N+1)/2 block forwards per sample (blocks before the quantized one replayed); the
    importance matrix covers every block weight. Quantize on those costs, Save, Unet Loader
    (GGUF), sample."""
    name = random_checkpoint(comfy, family)
    video = ROUND_TRIP[family].get("video", False)
    plain = comfy.run({"load": loader(f"{name}.safetensors"),
                       **sampling(["load", 0], 7, f"families/{family}-plain", steps=3, video=video)})
    costs, types = f"{name}-captured", "Q8_0, Q4_K"  # two types: the 0.5 B-parameter models quantize slowly
    measured = comfy.run({"load": loader(f"{name}.safetensors"), "capture": capture(["load", 0], costs, types, step=1),
                          **sampling(["capture", 0], 7, f"families/{family}-captured", steps=3, video=video)})
    assert torch.equal(saved_latent(comfy, plain), saved_latent(comfy, measured))
    folder = comfy.base / "models" / "mxgguf_costs"
    table = load_costs(folder / f"{costs}.json")
    model = FAMILIES[family].model()
    n = model.n_blocks
    assert table.family_model.family.name == family and table.measure == FINAL_HIDDEN_STATE
    assert table.provenance["block_forwards_per_sample"] == n + 2 * n * (n + 1) // 2
    assert [sorted(c) for c in table.costs()] == [["Q4_K", "Q8_0"]] * n
    assert all(c["Q4_K"] > c["Q8_0"] > 0 for c in table.costs())
    assert [(s["step"], s["dtype"]) for s in table.samples] == [(1, "float32")]  # ComfyUI computes float32 on a CPU
    imatrix = load_imatrix(folder / f"{costs}.imatrix.gguf")
    assert set(imatrix.sums) == {k for k, s in model.shapes().items() if model.is_quantizable(k, s)}
    summary, file = quantize_save_and_reload(comfy, family, name, f"{costs}.json", types)
    assert f"{costs}.json" in summary and file["costs"] != "estimated from the weights"
    comfy.free()


@pytest.mark.parametrize("family", ["flux1", "flux2", "hidream", "wan", "z_image"])
def test_comfyui_gguf_reads_what_the_cli_writes(family: str, tmp_path: Path) -> None:
    """Converted on the command line, read back by ComfyUI-GGUF's own loader: the architecture it
    accepts, every tensor at its shape (Wan's 5-D patch embedding too), block weights at the
    recipe's type. This is how FLUX.2, Z-Image and HiDream are tested: the test ComfyUI cannot
    sample them (FLUX.2 and Z-Image are newer; HiDream's detection fixes its full size)."""
    model = FAMILIES[family].model()
    src, out = tmp_path / f"{family}.safetensors", tmp_path / f"{family}.gguf"
    save_file(random_state_dict(model, seed=3), str(src))
    r = run_cli("convert", str(src), "--type", "Q4_K", "-o", str(out))
    assert r.returncode == 0, r.stderr
    read = run_in_comfyui("comfyui_gguf_read.py", out, timeout=300)
    assert read["arch"] == FAMILIES[family].gguf_arch
    shapes = model.shapes()
    assert {k: tuple(shape) for k, (shape, _) in read["tensors"].items()} == shapes
    decided = {k for k, s in shapes.items() if model.is_quantizable(k, s)}
    assert {read["tensors"][k][1] for k in decided} == {"Q4_K"}
    assert {t for k, (_, t) in read["tensors"].items() if k not in decided} == {"F32"}
