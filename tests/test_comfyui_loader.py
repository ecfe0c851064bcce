"""GGUF files written by the CLI, loaded by the real ComfyUI-GGUF loader and sampled in a
real ComfyUI server (skipped where no ComfyUI is installed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfyui_rig import PACK_ROOT, ComfyServer, sample_workflow, saved_latent
from flux_models import STOCK, TINY, flux
from quant.synthetic import random_state_dict

pytestmark = pytest.mark.comfy

MIXED = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "IQ4_XS", "Q3_K"]  # one per block of the tiny model


def cli_convert(src: Path, out: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "quant", "convert", str(src), "-o", str(out), *args],
                       cwd=PACK_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def dequantized_copy(gguf_path: Path, out: Path) -> None:
    """The GGUF's tensors dequantized by gguf-py, as a float32 safetensors checkpoint."""
    reader = gguf.GGUFReader(gguf_path)
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(v) for v in reversed(t.shape))
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        tensors[t.name] = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
    save_file(tensors, str(out))


@pytest.fixture(scope="module")
def tiny_mixed(comfy: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny FLUX converted by the CLI with one type per block, in ComfyUI's models/unet."""
    work = tmp_path_factory.mktemp("tiny")
    src = work / "tiny-flux.safetensors"
    save_file(random_state_dict(TINY, seed=1), str(src))
    recipe = work / "mixed.yaml"
    recipe.write_text(f"depth: {{double: 2, single: 4}}\nblocks: [{', '.join(MIXED)}]\n")
    cli_convert(src, comfy.unet / "tiny-flux_mixed.gguf", "--recipe", str(recipe))
    return "tiny-flux_mixed.gguf"


def test_cli_output_loads_in_unet_loader_gguf_and_samples(comfy: ComfyServer, tiny_mixed: str) -> None:
    latent = saved_latent(comfy, comfy.run(sample_workflow(tiny_mixed, "gguf", seed=3, prefix="loader/gguf")))
    assert latent.shape == (1, 16, 8, 8)
    assert torch.isfinite(latent).all() and latent.std() > 0.1


def test_dequant_float32_equals_gguf_py_dequantized_weights(comfy: ComfyServer, tiny_mixed: str) -> None:
    dequantized_copy(comfy.unet / tiny_mixed, comfy.models / "tiny-flux_mixed_deq.safetensors")
    via_gguf = comfy.run(sample_workflow(tiny_mixed, "gguf-f32", seed=5, prefix="loader/f32"))
    via_safetensors = comfy.run(sample_workflow("tiny-flux_mixed_deq.safetensors", "safetensors", seed=5,
                                                prefix="loader/deq"))
    a, b = saved_latent(comfy, via_gguf), saved_latent(comfy, via_safetensors)
    assert torch.equal(a, b), f"max abs diff {(a - b).abs().max().item()}"


def test_stock_width_model_with_unpatched_detection(comfy: ComfyServer, tmp_path: Path) -> None:
    """FLUX.1's real widths (hidden 3072), one double + one single block: ComfyUI's own
    detection builds it, and the mixed GGUF samples."""
    cfg = flux(STOCK, depth_double=1, depth_single=1)
    src = tmp_path / "stock-flux.safetensors"
    save_file(random_state_dict(cfg, seed=2), str(src))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("depth: {double: 1, single: 1}\nblocks: [Q8_0, Q4_K]\n")
    cli_convert(src, comfy.unet / "stock-flux_mixed.gguf", "--recipe", str(recipe))
    src.unlink()
    wf = sample_workflow("stock-flux_mixed.gguf", "gguf", seed=7, prefix="loader/stock")
    wf["report"] = {"class_type": "MxTestModelReport", "inputs": {"model": ["load", 0]}}
    log_start = len(comfy.log_path.read_text())
    entry = comfy.run(wf)
    report = entry["outputs"]["report"]["report"][0]
    assert report["model_class"] == "Flux"
    assert report["config"]["hidden_size"] == 3072 and report["config"]["num_heads"] == 24
    assert "widths from tensors" not in comfy.log_path.read_text()[log_start:]  # the fixture patch stayed out
    latent = saved_latent(comfy, entry)
    assert torch.isfinite(latent).all() and latent.std() > 0.1
    comfy.free()
