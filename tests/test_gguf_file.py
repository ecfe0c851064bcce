"""The streaming writer: what it writes, what it reads back, and what it refuses."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from quant import codecs
from quant.models import ArchitectureError, detect
from quant.checkpoint import CheckpointError, open_safetensors, state_dict_source
from quant.encode import write_gguf
from quant.gguf_file import GGUFWriteError, read_summary
from quant.imatrix import Imatrix, save_imatrix
from quant.recipe import Recipe, RecipeError
from quant.tensor_plan import average_bpw, plan_tensors
from quant.synthetic import random_state_dict
from flux_models import TINY

MIXED = ("Q8_0", "Q6_K", "Q5_K", "IQ4_XS", "Q4_K", "Q3_K")


def convert(src: Path, out: Path, types: tuple[str, ...] = MIXED, **kw):
    with open_safetensors(src) as source:
        arch = detect(source.shapes)
        recipe = Recipe.for_model(arch, types, name="test")
        plan = plan_tensors(arch, source.shapes, recipe)
        return write_gguf(source, recipe, plan, out, **kw), plan


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".part", ".gguf"))


def test_writes_every_tensor_exactly(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    result, plan = convert(tiny_checkpoint, out)
    assert result.path == out and result.size_bytes == out.stat().st_size
    assert result.bpw == pytest.approx(average_bpw(plan))
    source = load_file(str(tiny_checkpoint))
    reader = gguf.GGUFReader(out)
    assert len(reader.tensors) == len(source)
    for t in reader.tensors:
        x = source[t.name].float()
        want = codecs.quantize(x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x[None], t.tensor_type.name)
        assert np.array_equal(np.ascontiguousarray(t.data).reshape(-1).view(np.uint8), want.numpy().reshape(-1)), t.name
    fields = {f.name: f.contents() for f in reader.fields.values()}
    assert fields["general.architecture"] == "flux"
    assert fields["mxgguf.source.name"] == "tiny-flux.safetensors"
    assert fields["mxgguf.source.sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert "Q6_K" in fields["mxgguf.recipe"]


def test_summary(tiny_checkpoint: Path, tmp_path: Path) -> None:
    convert(tiny_checkpoint, tmp_path / "out.gguf")
    s = read_summary(tmp_path / "out.gguf")
    assert s["blocks"] == list(MIXED)
    assert s["model"].startswith("FLUX.1 [dev] (2 double + 4 single") and s["family"] == "flux1"
    assert s["metadata"]["general.architecture"] == "flux" and s["metadata"]["mxgguf.family"] == "flux1"
    assert set(s["type_params"]) == set(MIXED) | {"F32"}


def test_in_memory_source_with_prefix(tmp_path: Path) -> None:
    sd = random_state_dict(TINY, prefix="model.diffusion_model.")
    source = state_dict_source(sd, "mem-flux")
    arch = detect(source.shapes)
    recipe = Recipe.uniform(arch, "Q8_0")
    plan = plan_tensors(arch, source.shapes, recipe)
    write_gguf(source, recipe, plan, tmp_path / "m.gguf")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert "img_in.weight" in names and not any(n.startswith("model.") for n in names)


def test_never_overwrites(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        convert(tiny_checkpoint, out)
    assert out.read_bytes() == b"precious"
    convert(tiny_checkpoint, out, overwrite=True)
    assert out.stat().st_size > 1000
    assert leftovers(tmp_path) == ["out.gguf"]


def test_missing_output_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="output folder .*nowhere does not exist"):
        convert(tiny_checkpoint, tmp_path / "nowhere" / "out.gguf")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights(tmp_path: Path, value: float) -> None:
    sd = random_state_dict(TINY)
    sd["single_blocks.2.linear1.weight"][3, 5] = value
    src = tmp_path / "bad.safetensors"
    save_file(sd, str(src))
    with pytest.raises(CheckpointError, match=r"single_blocks.2.linear1.weight \(rows 0-\d+\) holds 1 NaN/Inf"):
        convert(src, tmp_path / "out.gguf")
    assert leftovers(tmp_path) == []


def test_truncated_and_corrupt_checkpoints(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "header.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    for name in ("trunc", "garbage", "header"):
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            convert(tmp_path / f"{name}.safetensors", tmp_path / "out.gguf")
    assert leftovers(tmp_path) == []


def test_wrong_architecture(tmp_path: Path) -> None:
    src = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(src))
    with pytest.raises(ArchitectureError, match="SD1.x/SDXL"):
        convert(src, tmp_path / "out.gguf")
    diffusers = tmp_path / "diffusers.safetensors"
    save_file({"single_transformer_blocks.0.attn.to_q.weight": torch.zeros(4, 4),
               "x_embedder.weight": torch.zeros(4, 4)}, str(diffusers))
    with pytest.raises(ArchitectureError, match="FLUX in the diffusers layout"):
        convert(diffusers, tmp_path / "out.gguf")


def test_unknown_type_in_recipe(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown type 'Q9_0'"):
        convert(tiny_checkpoint, tmp_path / "out.gguf", types=("Q9_0",) * 6)


def test_disk_full_midway(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = 0
    real = gguf.GGUFWriter.write_tensor_data

    def failing(self, tensor, *a, **kw):
        nonlocal writes
        writes += 1
        if writes == 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, tensor, *a, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing)
    with pytest.raises(GGUFWriteError, match="failed after .* No space left on device; nothing was written"):
        convert(tiny_checkpoint, tmp_path / "out.gguf")
    assert leftovers(tmp_path) == []


def test_interrupt_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def cancel(done: int, total: int, key: str) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(tiny_checkpoint, tmp_path / "out.gguf", progress=cancel)
    assert leftovers(tmp_path) == []


def held_by_this_process(path: Path) -> list[str]:
    """How this process still holds ``path``: open descriptors, memory maps (Linux's /proc)."""
    target = str(path.resolve())
    held = [f"fd {fd.name}" for fd in Path("/proc/self/fd").iterdir() if _link(fd) == target]
    maps = Path("/proc/self/maps").read_text().splitlines()
    return held + [f"mapped at {line.split()[0]}" for line in maps if line.endswith(" " + target)]


def _link(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:  # closed since listing (the listing's own descriptor)
        return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc to see open files")
def test_temp_file_released_before_rename(tiny_checkpoint: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows cannot rename a file still open or mapped, and a crash between the rename and a
    late close loses data: every writer closes (and unmaps) its temp file before it is renamed."""
    seen: dict[str, list[str]] = {}

    def checking(rename):
        def wrapper(src, dst, *args, **kwargs):
            seen[Path(src).name] = held_by_this_process(Path(src))
            return rename(src, dst, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(os, "link", checking(os.link))
    monkeypatch.setattr(os, "replace", checking(os.replace))
    convert(tiny_checkpoint, tmp_path / "out.gguf")
    imatrix = Imatrix()
    imatrix.add("double_blocks.0.img_attn.qkv.weight", torch.randn(4, 256))
    save_imatrix(imatrix, tmp_path / "out.imatrix.gguf")
    assert len(seen) == 2 and not any(seen.values()), seen
