"""A mixed model quantized once, then sampled from memory and saved: the same bytes as the
streaming converter, and the values ComfyUI-GGUF's dequantization gives."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from quant.models import detect
from quant.checkpoint import state_dict_source
from quant.encode import write_gguf
from quant.mixed import quantize_model
from quant.recipe import Recipe
from quant.tensor_plan import plan_tensors
from quant.synthetic import random_state_dict
from flux_models import TINY

TYPES = ("Q8_0", "Q6_K", "Q4_K", "IQ4_XS", "Q3_K", "BF16")


@pytest.fixture
def model():
    sd = random_state_dict(TINY, seed=4)
    arch = detect({k: tuple(v.shape) for k, v in sd.items()})
    return state_dict_source(sd, "tiny-flux.safetensors"), arch, Recipe.for_model(arch, TYPES)


def test_saved_file_equals_streamed_conversion(model, tmp_path: Path) -> None:
    source, arch, recipe = model
    mixed = quantize_model(source, arch, recipe)
    mixed.save(tmp_path / "from-memory.gguf")
    write_gguf(source, recipe, plan_tensors(arch, source.shapes, recipe), tmp_path / "streamed.gguf")
    assert (tmp_path / "from-memory.gguf").read_bytes() == (tmp_path / "streamed.gguf").read_bytes()
    assert mixed.data_bytes == sum(t.nbytes for t in mixed.plan)


def test_dequantized_equals_gguf_py(model, tmp_path: Path) -> None:
    source, arch, recipe = model
    mixed = quantize_model(source, arch, recipe)
    mixed.save(tmp_path / "m.gguf")
    for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors:
        expected = np.array(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)
        got = mixed.dequantized(t.name)
        assert got.dtype == torch.float32
        assert torch.equal(got.reshape(-1), torch.from_numpy(expected.reshape(-1))), t.name


def test_progress_may_cancel(model) -> None:
    source, arch, recipe = model
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_model(source, arch, recipe, progress=progress)
    assert seen == sorted(seen) and len(seen) == 3
