"""Importance matrices: llama.cpp's GGUF imatrix format, headless collection, convert --imatrix."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from quant import codecs
from quant.models import detect
from quant.checkpoint import state_dict_source
from quant.models.flux1_blocks import ReferenceStack
from quant.imatrix import Imatrix, ImatrixError, add_to_file, linear_inputs, load_imatrix, save_imatrix
from quant.synthetic import random_state_dict
from flux_models import TINY, flux
from tests.cli_runner import run_cli

WEIGHT = "double_blocks.0.img_attn.qkv.weight"




def test_round_trip_add_and_merge(tmp_path: Path) -> None:
    a = Imatrix()
    x = torch.randn(3, 5, 256)
    a.add(WEIGHT, x)
    a.chunk_count = 1
    assert a.counts[WEIGHT] == 15
    torch.testing.assert_close(a.importance(WEIGHT), (x.reshape(-1, 256) ** 2).mean(dim=0))
    save_imatrix(a, tmp_path / "a.gguf")
    with pytest.raises(FileExistsError):
        save_imatrix(a, tmp_path / "a.gguf")
    b = load_imatrix(tmp_path / "a.gguf")
    torch.testing.assert_close(b.importance(WEIGHT), a.importance(WEIGHT))
    total = add_to_file(tmp_path / "a.gguf", b)  # runs add up
    again = load_imatrix(tmp_path / "a.gguf")
    assert again.counts[WEIGHT] == 30 and again.chunk_count == 2 == total.chunk_count
    torch.testing.assert_close(again.importance(WEIGHT), a.importance(WEIGHT))
    other = Imatrix()
    other.add(WEIGHT, torch.randn(2, 512))
    with pytest.raises(ImatrixError, match="different models"):
        a.merged(other)


def test_written_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    a = Imatrix(datasets=["capture-1.safetensors"], chunk_count=4)
    a.add(WEIGHT, torch.randn(7, 256))
    save_imatrix(a, tmp_path / "a.gguf")
    r = gguf.GGUFReader(tmp_path / "a.gguf")
    assert r.get_field("general.type").contents() == "imatrix"
    assert r.get_field("imatrix.datasets").contents() == ["capture-1.safetensors"]
    assert r.get_field("imatrix.chunk_count").contents() == 4
    tensors = {t.name: t for t in r.tensors}
    assert list(tensors[WEIGHT + ".in_sum2"].shape) == [256, 1]  # ne0 = columns, ne1 = matrices
    assert list(tensors[WEIGHT + ".counts"].shape) == [1, 1] and float(tensors[WEIGHT + ".counts"].data[0, 0]) == 7


def test_bad_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ImatrixError, match="junk.gguf: not an importance matrix"):
        load_imatrix(tmp_path / "junk.gguf")
    a = Imatrix(chunk_count=1)
    a.add(WEIGHT, torch.randn(4, 256))
    save_imatrix(a, tmp_path / "ok.gguf")
    data = (tmp_path / "ok.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 300])
    with pytest.raises(ImatrixError, match="cut.gguf: not a readable GGUF"):
        load_imatrix(tmp_path / "cut.gguf")
    w = gguf.GGUFWriter(tmp_path / "model.gguf", "flux")
    w.add_tensor("x", np.zeros((2, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ImatrixError, match="not an importance matrix"):
        load_imatrix(tmp_path / "model.gguf")
    a.sums[WEIGHT][3] = np.nan
    save_imatrix_unchecked(a, tmp_path / "nan.gguf")
    with pytest.raises(ImatrixError, match="NaN, infinite or negative"):
        load_imatrix(tmp_path / "nan.gguf")


def save_imatrix_unchecked(imatrix: Imatrix, path: Path) -> None:
    w = gguf.GGUFWriter(path, arch="")
    w.add_type("imatrix")
    for name, sums in imatrix.sums.items():
        w.add_tensor(name + ".in_sum2", sums.astype(np.float32)[None])
        w.add_tensor(name + ".counts", np.array([[imatrix.counts[name]]], np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def test_capture_hook_sums_what_add_sums() -> None:
    """The hook Capture collects with (``linear_inputs``) adds, per weight, the squares of its
    input's columns and the rows seen, exactly as ``Imatrix.add`` does on the same inputs."""
    torch.manual_seed(0)
    stack = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 16))
    batches = [torch.randn(3, 5, 32), torch.randn(7, 32) - 0.5]
    hooked, expected = Imatrix(), Imatrix()
    with torch.no_grad():
        with linear_inputs(stack, ["0.weight", "2.weight"], hooked):
            outputs = [stack(x) for x in batches]
        for x, y in zip(batches, outputs):
            torch.testing.assert_close(y, stack(x), rtol=0, atol=0)  # the hooks only read
            expected.add("0.weight", x)
            expected.add("2.weight", stack[1](stack[0](x)))
    assert hooked.counts == expected.counts == {"0.weight": 22, "2.weight": 22}
    for name in expected.sums:
        np.testing.assert_allclose(hooked.sums[name], expected.sums[name], rtol=1e-5)


def test_zero_count_quantizes_without_importance() -> None:
    a = Imatrix(sums={WEIGHT: np.ones(256)}, counts={WEIGHT: 0})
    assert a.importance(WEIGHT) is None and a.importance("single_blocks.0.linear1.weight") is None


def test_stack_observes_every_block_weight() -> None:
    shapes = TINY.shapes()
    arch = detect(shapes)
    source = state_dict_source(random_state_dict(TINY, dtype=torch.float32), "tiny")
    stack = ReferenceStack(arch, source)
    inputs = stack.make_inputs(0, 64, 64, 0.5)
    collected = Imatrix()
    state = stack.start(inputs)
    with torch.no_grad():
        for b in range(arch.n_blocks):
            state = stack.forward(b, state, inputs, collected.add)
    block_weights = {arch.strip_prefix(k) for k, s in shapes.items() if arch.is_quantizable(arch.strip_prefix(k), s)}
    assert set(collected.sums) == block_weights
    collected.check_model({arch.strip_prefix(k): s for k, s in shapes.items()})
    mod = "double_blocks.0.img_mod.lin.weight"  # its input: silu(vec), one row per sample
    assert collected.counts[mod] == 1
    np.testing.assert_allclose(collected.sums[mod], (F.silu(inputs.vec).double() ** 2).reshape(-1).numpy())
    assert collected.counts[WEIGHT] == inputs.img.shape[1]  # every image token


def test_collect_then_convert_with_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    im = tmp_path / "tiny.imatrix.gguf"
    r = run_cli("imatrix", str(tiny_checkpoint), "-o", str(im), "--resolution", "64")
    assert r.returncode == 0, r.stderr
    r = run_cli("imatrix", str(tiny_checkpoint), "-o", str(im), "--resolution", "64", "--seed", "1")
    assert r.returncode == 0, r.stderr
    collected = load_imatrix(im)
    assert collected.chunk_count == 2
    out = tmp_path / "q.gguf"
    r = run_cli("convert", str(tiny_checkpoint), "--type", "Q4_K", "--imatrix", str(im), "-o", str(out))
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(out)
    assert reader.get_field("quantize.imatrix.file").contents() == im.name
    assert reader.get_field("quantize.imatrix.entries_count").contents() == len(collected.sums)
    assert reader.get_field("quantize.imatrix.chunks_count").contents() == 2
    stored = {t.name: np.asarray(t.data).reshape(-1) for t in reader.tensors}
    from safetensors.torch import load_file

    weight = load_file(str(tiny_checkpoint))[WEIGHT].float()
    want = codecs.quantize(weight, "Q4_K", imatrix=collected.importance(WEIGHT)).reshape(-1).numpy()
    assert np.array_equal(stored[WEIGHT], want)
    assert not np.array_equal(want, codecs.quantize(weight, "Q4_K").reshape(-1).numpy())
    summary = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert summary["blocks"] == ["Q4_K"] * 6


def test_imatrix_of_another_model_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    wide = flux(hidden_size=512, heads=8, depth_double=1, depth_single=1, mlp_hidden=2048)
    other = tmp_path / "wide.safetensors"
    save_file(random_state_dict(wide), str(other))
    im = tmp_path / "wide.imatrix.gguf"
    assert run_cli("imatrix", str(other), "-o", str(im), "--resolution", "64").returncode == 0
    out = tmp_path / "q.gguf"
    r = run_cli("convert", str(tiny_checkpoint), "--type", "Q4_K", "--imatrix", str(im), "-o", str(out))
    assert r.returncode == 2 and "collected on another model" in r.stderr and not out.exists()


def test_costs_with_an_imatrix_are_kept_apart(tiny_checkpoint: Path, tmp_path: Path) -> None:
    im = tmp_path / "tiny.imatrix.gguf"
    assert run_cli("imatrix", str(tiny_checkpoint), "-o", str(im), "--resolution", "64").returncode == 0
    common = ("costs", str(tiny_checkpoint), "--types", "Q4_K", "Q2_K", "--resolution", "64")
    r = run_cli(*common, "-o", str(tmp_path / "with.json"), "--imatrix", str(im))
    assert r.returncode == 0, r.stderr
    r = run_cli(*common, "-o", str(tmp_path / "without.json"))
    assert r.returncode == 0, r.stderr
    from quant.costs import CostError, load_costs

    with_im, without = load_costs(tmp_path / "with.json"), load_costs(tmp_path / "without.json")
    assert with_im.provenance["imatrix"] == im.name and "imatrix" not in without.provenance
    assert with_im.costs() != without.costs()  # the same sample, quantized otherwise
    with pytest.raises(CostError, match="different importance matrices"):
        with_im.merged(without)
    r = run_cli(*common, "-o", str(tmp_path / "with.json"))  # adding a run without it to the file
    assert r.returncode == 2 and "different importance matrices" in r.stderr


def test_sweep_quantizes_with_importance() -> None:
    from quant.sweep import quantized_weights

    w = {"a.weight": torch.randn(8, 256)}
    imp = torch.rand(256)
    got = quantized_weights(w, "Q4_K", lambda name: imp)["a.weight"]
    want = codecs.dequantize(codecs.quantize(w["a.weight"], "Q4_K", imatrix=imp), "Q4_K", (8, 256))
    assert torch.equal(got, want) and not torch.equal(got, quantized_weights(w, "Q4_K")["a.weight"])


def test_dat_format_round_trip(tmp_path: Path) -> None:
    a = Imatrix(datasets=["prompts.txt"], chunk_count=3)
    a.add(WEIGHT, torch.randn(6, 256))
    a.add("single_blocks.0.linear2.weight", torch.randn(4, 1280))
    save_imatrix(a, tmp_path / "a.imatrix.gguf")
    r = run_cli("imatrix-convert", str(tmp_path / "a.imatrix.gguf"), "-o", str(tmp_path / "a.dat"))
    assert r.returncode == 0, r.stderr
    raw = (tmp_path / "a.dat").read_bytes()
    assert int.from_bytes(raw[:4], "little") == 2
    name_len = int.from_bytes(raw[4:8], "little")
    assert raw[8:8 + name_len] == b"model.diffusion_model." + WEIGHT.encode()  # stable-diffusion.cpp's names
    r = run_cli("imatrix-convert", str(tmp_path / "a.dat"), "-o", str(tmp_path / "b.imatrix.gguf"))
    assert r.returncode == 0, r.stderr
    b = load_imatrix(tmp_path / "b.imatrix.gguf")
    assert b.chunk_count == 3 and b.datasets == ["prompts.txt"] and set(b.sums) == set(a.sums)
    for name in a.sums:
        torch.testing.assert_close(b.importance(name), a.importance(name))
    (tmp_path / "bad.dat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImatrixError, match="bad.dat: not an importance matrix"):
        load_imatrix(tmp_path / "bad.dat")
