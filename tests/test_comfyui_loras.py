"""LoRAs baked in by Mixed GGUF Quantize, in a real ComfyUI: LoraLoaderModelOnly upstream, the
file loaded by ComfyUI-GGUF without any LoRA. Skipped, saying why, where no ComfyUI is installed."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfyui_rig import (PACK_ROOT, ComfyServer, WorkflowError, capture, loader, quantize, run_in_comfyui,
                         sample_workflow, sampling, save, saved_latent)
from flux_models import TINY, TINY_TYPES, midway_bpw
from quant.costs import load_costs
from quant.gguf_file import read_summary
from quant.synthetic import random_lora
from tests.cli_runner import run_cli

# Block weights of both kinds of block, and two tensors that stay F32 in the file (embedder, final layer).
PATCHED = ("double_blocks.0.img_attn.qkv.weight", "double_blocks.1.txt_mlp.0.weight",
           "single_blocks.1.linear1.weight", "single_blocks.3.linear2.weight", "img_in.weight",
           "final_layer.linear.weight")
BPW = midway_bpw(TINY, "Q4_K", "Q8_0")


@pytest.fixture(scope="module")
def loras(comfy: ComfyServer) -> dict[str, str]:
    """Random LoRAs in models/loras: two on this model (ComfyUI's generic keys and kohya's, rank 8
    and 16, updates a tenth of the weights'), one made for Wan, one for a text encoder only."""
    folder = comfy.base / "models" / "loras"
    folder.mkdir(exist_ok=True)
    files = {"a": random_lora(TINY, PATCHED, rank=8, seed=1, alpha=4.0),
             "b": random_lora(TINY, PATCHED[::2], rank=16, seed=2, kohya=True),
             "wan": {"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(64, 4),
                     "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 64)},
             "te": {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(64, 4),
                    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 64)}}
    for name, sd in files.items():
        save_file(sd, folder / f"lora-{name}.safetensors")
    return {name: f"lora-{name}.safetensors" for name in files}


def with_loras(tiny: str, chain: list[tuple[str, float]]) -> tuple[dict, list]:
    """Load Diffusion Model then a LoraLoaderModelOnly per (name, strength): the nodes, and the MODEL out."""
    nodes, model = {"load": loader(tiny)}, ["load", 0]
    for i, (name, strength) in enumerate(chain):
        nodes[f"lora{i}"] = {"class_type": "LoraLoaderModelOnly",
                             "inputs": {"model": model, "lora_name": name, "strength_model": strength}}
        model = [f"lora{i}", 0]
    return nodes, model


def quantized(comfy: ComfyServer, tiny: str, costs: str, chain: list[tuple[str, float]], name: str,
              **extra: dict) -> tuple[Path, dict]:
    nodes, model = with_loras(tiny, chain)
    entry = comfy.run({**nodes, "quant": quantize(model, costs, BPW), "savegguf": save(["quant", 0], name), **extra})
    return Path(entry["outputs"]["savegguf"]["text"][0].splitlines()[0]), entry


def tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(path).tensors}


def cli_convert(comfy: ComfyServer, tiny: str, like: Path, folder: Path, *loras: str) -> Path:
    """``convert`` of the tiny checkpoint with the recipe the file ``like`` records and ``loras``,
    in ComfyUI's Python: the same torch as the server's, so the same float32 matrix products."""
    recipe, out = folder / "recipe.yaml", folder / "cli.gguf"
    recipe.write_text(read_summary(like)["metadata"]["mxgguf.recipe"])
    r = subprocess.run([str(comfy.python), "-m", "quant", "convert", str(comfy.models / tiny), "--recipe", str(recipe),
                        *[a for lora in loras for a in ("--lora", lora)], "-o", str(out)],
                       cwd=PACK_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_baked_file_samples_as_quantizes_model(comfy: ComfyServer, tiny: str, tiny_costs: str, loras) -> None:
    """The file, loaded without any LoRA, samples what Quantize's MODEL samples; its error against
    the full-precision model with the LoRA is reported beside the unbaked file's."""
    chain = [(loras["a"], 0.8)]
    path, entry = quantized(comfy, tiny, tiny_costs, chain, "loras-baked", **sampling(["quant", 1], 7, "loras/inline"))
    inline = saved_latent(comfy, entry)
    from_file = saved_latent(comfy, comfy.run(sample_workflow(path.name, "gguf-f32", seed=7, prefix="loras/file")))
    assert torch.equal(inline, from_file), f"max abs diff {(inline - from_file).abs().max().item()}"
    assert read_summary(path)["loras"] == [{"name": loras["a"], "strength": 0.8}]
    assert f"LoRAs baked in: {loras['a']} at 0.8" in entry["outputs"]["savegguf"]["text"][0]
    assert f"LoRAs baked in: {loras['a']} at 0.8" in entry["outputs"]["quant"]["text"][0]
    assert "costs measured with LoRAs: none" in entry["outputs"]["quant"]["text"][0]
    # against the full-precision model with the LoRA: the baked file, and the unbaked one with the LoRA on the fly
    nodes, model = with_loras(tiny, chain)
    reference = saved_latent(comfy, comfy.run({**nodes, **sampling(model, 7, "loras/reference")}))
    plain, _ = quantized(comfy, tiny, tiny_costs, [], "loras-plain")
    on_the_fly = {"load": loader(plain.name, "gguf-f32"),
                  "lora0": {"class_type": "LoraLoaderModelOnly",
                            "inputs": {"model": ["load", 0], "lora_name": loras["a"], "strength_model": 0.8}}}
    unbaked = saved_latent(comfy, comfy.run({**on_the_fly, **sampling(["lora0", 0], 7, "loras/fly")}))
    without = saved_latent(comfy, comfy.run(sample_workflow(plain.name, "gguf-f32", seed=7, prefix="loras/without")))
    errors = {"baked": float((from_file - reference).pow(2).mean()),
              "unbaked, LoRA applied by ComfyUI-GGUF": float((unbaked - reference).pow(2).mean()),
              "no LoRA": float((without - reference).pow(2).mean())}
    print(f"\nlatent MSE against the full-precision model with the LoRA, {BPW} bpw: {json.dumps(errors)}")
    assert errors["baked"] < errors["no LoRA"] / 4  # the LoRA is in the file


def test_strength_zero_is_the_unpatched_file(comfy: ComfyServer, tiny: str, tiny_costs: str, loras) -> None:
    plain, _ = quantized(comfy, tiny, tiny_costs, [], "loras-zero")
    zero, _ = quantized(comfy, tiny, tiny_costs, [(loras["a"], 0.0)], "loras-zero")
    assert zero != plain and zero.read_bytes() == plain.read_bytes()


def test_stacked_loras_are_the_command_lines_sum(comfy: ComfyServer, tiny: str, tiny_costs: str, loras,
                                                  tmp_path: Path) -> None:
    """Two LoRAs stacked in ComfyUI give the file ``convert --lora A --lora B`` makes with the same
    recipe (whose sum the CLI tests check against a hand-merged checkpoint), byte for byte."""
    chain = [(loras["a"], 0.5), (loras["b"], -1.0)]
    path, _ = quantized(comfy, tiny, tiny_costs, chain, "loras-stacked")
    summary = read_summary(path)
    assert summary["loras"] == [{"name": loras["a"], "strength": 0.5}, {"name": loras["b"], "strength": -1.0}]
    folder = comfy.base / "models" / "loras"
    cli = cli_convert(comfy, tiny, path, tmp_path, f"{folder / loras['a']}:0.5", f"{folder / loras['b']}:-1")
    assert tensor_bytes(cli) == tensor_bytes(path)
    one, _ = quantized(comfy, tiny, tiny_costs, chain[:1], "loras-one")
    assert tensor_bytes(one) != tensor_bytes(path)


def test_lora_for_another_model_is_refused(comfy: ComfyServer, tiny: str, tiny_costs: str, loras) -> None:
    for chain in ([(loras["wan"], 1.0)], [(loras["a"], 1.0), (loras["wan"], 0.5)]):
        with pytest.raises(WorkflowError, match=f"LoRA {loras['wan']} at .* matches no tensor of this model") as e:
            quantized(comfy, tiny, tiny_costs, chain, "loras-foreign")
        assert "\n" not in str(e.value).strip()
    assert not list(comfy.unet.glob("loras-foreign*"))
    # a LoRA of the text encoder only changes the CLIP: nothing to bake, nothing claimed
    path, _ = quantized(comfy, tiny, tiny_costs, [(loras["te"], 1.0)], "loras-te")
    assert read_summary(path)["loras"] == []


def test_base_weights_are_read_where_a_lora_clone_patched_them(comfy: ComfyServer, tiny: str, tiny_costs: str, loras,
                                                                tmp_path: Path) -> None:
    """Sampling the LoRA'd clone patches the weights it shares with the plain model in place (and
    leaves them so while it stays loaded): the plain model quantized next is still the checkpoint's."""
    nodes, model = with_loras(tiny, [(loras["a"], 1.0)])
    comfy.run({**nodes, **sampling(model, 13, "loras/in-place")})
    path, _ = quantized(comfy, tiny, tiny_costs, [], "loras-base")
    assert tensor_bytes(cli_convert(comfy, tiny, path, tmp_path)) == tensor_bytes(path)


def test_capture_measures_the_patched_model_and_keeps_its_table_apart(comfy: ComfyServer, tiny: str,
                                                                       tiny_costs: str, loras) -> None:
    nodes, model = with_loras(tiny, [(loras["a"], 0.8)])
    plain = saved_latent(comfy, comfy.run({**nodes, **sampling(model, 9, "loras/plain")}))
    entry = comfy.run({**nodes, "capture": capture(model, "tiny-lora-costs", TINY_TYPES),
                       **sampling(["capture", 0], 9, "loras/captured")})
    assert torch.equal(saved_latent(comfy, entry), plain)
    costs = comfy.base / "models" / "mxgguf_costs"
    table = load_costs(costs / "tiny-lora-costs.json")
    assert table.provenance["loras"] == [{"name": loras["a"], "strength": 0.8}]
    base = load_costs(costs / tiny_costs)
    assert table.model["weights_sha256"] == base.model["weights_sha256"]  # the same base model
    assert table.costs() != base.costs()
    r = run_cli("merge", str(costs / tiny_costs), str(costs / "tiny-lora-costs.json"), "-o",
                str(costs / "merged.json"))
    assert r.returncode == 2 and "different LoRAs" in r.stderr and not (costs / "merged.json").exists()
    # Capture refuses at once to add the plain model's costs to the LoRA's file
    kept = (costs / "tiny-lora-costs.json").read_bytes()
    with pytest.raises(WorkflowError, match="tiny-lora-costs.json was measured with LoRAs lora-a.safetensors at 0.8"):
        comfy.run({"load": loader(tiny), "capture": capture(["load", 0], "tiny-lora-costs", TINY_TYPES),
                   **sampling(["capture", 0], 9, "loras/refused")})
    assert (costs / "tiny-lora-costs.json").read_bytes() == kept
    # Quantize says so when the costs were measured with the same LoRAs (no warning line)
    path, entry = quantized(comfy, tiny, "tiny-lora-costs.json", [(loras["a"], 0.8)], "loras-captured")
    assert "costs measured with LoRAs" not in entry["outputs"]["quant"]["text"][0]


def test_capture_sweeps_low_vram_weights_patched() -> None:
    """Loaded in low VRAM, ComfyUI patches a weight as its layer runs: while Capture sweeps the block,
    the weight quantized is the patched one and the layer runs the quantized value as it is (the
    plain view would add the LoRA again on top); everything is put back after."""
    got = run_in_comfyui("comfyui_lowvram_check.py", PACK_ROOT)
    assert got["run_time_patched"] and got["swept_the_patched_weight"] and got["restored"]
    assert got["runs_as_swapped"] == 0.0 and got["plain_view_runs"] > 1e-3
