"""LoRAs baked in by the command line (``convert --lora``): the file is the merged model's, quantized.

The reference is independent of ``quant.lora``: the LoRA merged by hand into a float32
checkpoint (ComfyUI's formula), converted without any LoRA. Same tensors, same bytes."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flux_models import TINY
from quant.synthetic import random_lora
from tests.cli_runner import run_cli

# Block weights of both kinds of block, and one tensor outside the blocks that stays F32 in the file.
PATCHED = ("double_blocks.0.img_attn.qkv.weight", "double_blocks.1.txt_mlp.0.weight",
           "single_blocks.2.linear1.weight", "img_in.weight")


def tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(path).tensors}


def merged(checkpoint: Path, loras: list[tuple[dict[str, torch.Tensor], float]], out: Path) -> Path:
    """The checkpoint with each LoRA added at float32, ``W += strength * alpha/rank * up @ down``."""
    sd = {k: v.float() for k, v in load_file(checkpoint).items()}
    for lora, strength in loras:
        for key in PATCHED:
            stem = f"diffusion_model.{key.removesuffix('.weight')}"
            up, down = lora[f"{stem}.lora_up.weight"].float(), lora[f"{stem}.lora_down.weight"].float()
            alpha = lora[f"{stem}.alpha"].item() / down.shape[0] if f"{stem}.alpha" in lora else 1.0
            sd[key] += (strength * alpha) * torch.mm(up, down).reshape(sd[key].shape)
    save_file(sd, out)
    return out


def convert(src: Path, out: Path, *loras: str, qtype: str = "Q4_K") -> Path:
    r = run_cli("convert", str(src), "--type", qtype, "-o", str(out), *[a for lora in loras for a in ("--lora", lora)])
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def lora_a(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = random_lora(TINY, PATCHED, rank=8, seed=1, alpha=4.0)
    save_file(sd, tmp_path / "a.safetensors")
    return tmp_path / "a.safetensors", sd


@pytest.fixture
def lora_b(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = random_lora(TINY, PATCHED, rank=16, seed=2)
    save_file(sd, tmp_path / "b.safetensors")
    return tmp_path / "b.safetensors", sd


def test_baked_lora_is_the_merged_checkpoint_quantized(tiny_checkpoint: Path, tmp_path: Path, lora_a) -> None:
    path, sd = lora_a
    baked = tensor_bytes(convert(tiny_checkpoint, tmp_path / "baked.gguf", f"{path}:0.7"))
    reference = tensor_bytes(convert(merged(tiny_checkpoint, [(sd, 0.7)], tmp_path / "m.safetensors"),
                                     tmp_path / "ref.gguf"))
    plain = tensor_bytes(convert(tiny_checkpoint, tmp_path / "plain.gguf"))
    assert baked == reference
    assert {k for k in plain if plain[k] != baked[k]} == set(PATCHED)  # every patch landed, nothing else moved


def test_lora_at_strength_zero_is_the_unpatched_file(tiny_checkpoint: Path, tmp_path: Path, lora_a) -> None:
    plain = convert(tiny_checkpoint, tmp_path / "plain.gguf")
    zero = convert(tiny_checkpoint, tmp_path / "zero.gguf", f"{lora_a[0]}:0")
    assert zero.read_bytes() == plain.read_bytes()


def test_stacked_loras_add_up_and_are_recorded(tiny_checkpoint: Path, tmp_path: Path, lora_a, lora_b) -> None:
    baked = convert(tiny_checkpoint, tmp_path / "ab.gguf", f"{lora_a[0]}:0.5", str(lora_b[0]))
    reference = merged(tiny_checkpoint, [(lora_a[1], 0.5), (lora_b[1], 1.0)], tmp_path / "ab.safetensors")
    assert tensor_bytes(baked) == tensor_bytes(convert(reference, tmp_path / "ref.gguf"))
    summary = json.loads(run_cli("inspect", str(baked), "--json").stdout)
    assert summary["loras"] == [{"name": "a.safetensors", "strength": 0.5}, {"name": "b.safetensors", "strength": 1.0}]
    assert "LoRAs baked in: a.safetensors at 0.5, b.safetensors at 1" in run_cli("inspect", str(baked)).stdout


def test_kohya_keys_bake_as_the_generic_ones(tiny_checkpoint: Path, tmp_path: Path, lora_a) -> None:
    kohya = random_lora(TINY, PATCHED, rank=8, seed=1, alpha=4.0, kohya=True)
    save_file(kohya, tmp_path / "k.safetensors")
    generic = convert(tiny_checkpoint, tmp_path / "g.gguf", str(lora_a[0]))
    assert tensor_bytes(convert(tiny_checkpoint, tmp_path / "k.gguf", str(tmp_path / "k.safetensors"))) == \
        tensor_bytes(generic)


def refused(tiny_checkpoint: Path, tmp_path: Path, lora: dict[str, torch.Tensor]) -> str:
    save_file(lora, tmp_path / "bad.safetensors")
    r = run_cli("convert", str(tiny_checkpoint), "--type", "Q8_0", "-o", str(tmp_path / "x.gguf"),
                "--lora", str(tmp_path / "bad.safetensors"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.gguf").exists()
    return r.stderr


def test_foreign_and_unread_loras_are_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    wan = {"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(8, 4),
           "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 8)}
    assert "matches no tensor of this FLUX.1 checkpoint, e.g. 'diffusion_model.blocks.0.self_attn.q'" in \
        refused(tiny_checkpoint, tmp_path, wan)
    diffusers = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8)}
    assert "1 keys in a format convert does not read, e.g. 'transformer.single_transformer_blocks.0.attn.to_q." \
           "lora_A.weight'" in refused(tiny_checkpoint, tmp_path, diffusers)
    loha = {"diffusion_model.img_in.hada_w1_a": torch.zeros(4, 8)}
    assert "format convert does not read" in refused(tiny_checkpoint, tmp_path, loha)
    half = {k: v for k, v in random_lora(TINY, PATCHED[:1]).items() if "down" in k}
    assert "has a down matrix without its up one" in refused(tiny_checkpoint, tmp_path, half)
    up = "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight"
    down = "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight"
    for bad in ({down: torch.zeros(8, 7)}, {up: torch.zeros(256, 8), down: torch.zeros(8, 768)}, {down: torch.zeros(8)},
                {up: torch.zeros(768, 8, 3, 3)}, {"diffusion_model.double_blocks.0.img_attn.qkv.alpha": torch.ones(2)}):
        wrong = {**random_lora(TINY, PATCHED[:1]), **bad}
        assert "double_blocks.0.img_attn.qkv" in refused(tiny_checkpoint, tmp_path, wrong)


def test_text_encoder_keys_are_left_out(tiny_checkpoint: Path, tmp_path: Path, lora_a) -> None:
    with_te = {**lora_a[1], "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4)}
    save_file(with_te, tmp_path / "te.safetensors")
    assert tensor_bytes(convert(tiny_checkpoint, tmp_path / "te.gguf", str(tmp_path / "te.safetensors"))) == \
        tensor_bytes(convert(tiny_checkpoint, tmp_path / "a.gguf", str(lora_a[0])))


def test_chunks_of_rows_change_no_byte(tiny_checkpoint: Path, tmp_path: Path, lora_a,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's weights are read, patched and quantized 64 rows at a time here (the tiny model's
    fit one chunk otherwise): the same bytes, with the LoRA and without."""
    import quant.encode

    whole = [tensor_bytes(convert(tiny_checkpoint, tmp_path / f"w{i}.gguf", *lora)) for i, lora in
             enumerate([(), (f"{lora_a[0]}:0.7",)])]
    monkeypatch.setattr(quant.encode, "CHUNK_VALUES", {"cpu": 1})
    chunked = [tensor_bytes(convert(tiny_checkpoint, tmp_path / f"c{i}.gguf", *lora)) for i, lora in
               enumerate([(), (f"{lora_a[0]}:0.7",)])]
    assert chunked == whole


def test_patched_source_refuses_patches_it_cannot_hold() -> None:
    from quant.checkpoint import state_dict_source
    from quant.patches import patched_source

    sd = {"a.weight": torch.ones(4, 4), "b.bias": torch.ones(4)}
    source = state_dict_source(sd, "m")
    with pytest.raises(ValueError, match="name 1 tensors m does not have, e.g. 'c.weight'"):
        patched_source(source, lambda key, rows, start: rows, {"c.weight"})
    grown = patched_source(source, lambda key, rows, start: torch.zeros(5, 4), {"a.weight"})
    with pytest.raises(ValueError, match=r"change a.weight from \(4, 4\) to \(5, 4\)"):
        grown.read("a.weight")
    doubled = patched_source(source, lambda key, rows, start: rows * 2, {"a.weight"})
    assert torch.equal(doubled.read("a.weight"), 2 * sd["a.weight"]) and doubled.read("b.bias") is sd["b.bias"]
    assert doubled.base is source and sd["a.weight"].eq(1).all()  # the base is never written
