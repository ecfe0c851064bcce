"""Costs estimated from the weights: what they sum, how rows are sampled, where they are used."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flux_models import TINY
from quant import codecs
from quant.checkpoint import open_safetensors, state_dict_source
from quant.costs import ESTIMATED, CostError, load_costs
from quant.estimate import estimate_costs, sampled_rows
from quant.imatrix import Imatrix
from quant.models import FAMILIES
from quant.synthetic import random_state_dict
from quant.tensor_plan import tensor_type
from tests.cli_runner import run_cli

TYPES = ("Q8_0", "Q4_K", "Q3_K")


def full_weight_errors(model, sd: dict[str, torch.Tensor], qtype: str) -> list[float]:
    """Each block's summed squared error, every row of every quantizable weight quantized: the
    quantity the estimate samples."""
    totals = [0.0] * model.n_blocks
    for key, w in sd.items():
        if model.is_quantizable(key, w.shape):
            x = w.float()
            t = tensor_type(qtype, w.shape)
            err = codecs.dequantize(codecs.quantize(x, t), t, x.shape) - x
            totals[model.block_of(key)] += float((err.double() ** 2).sum())
    return totals


def test_sampled_rows() -> None:
    assert sampled_rows(20, 32) == [(0, 20)]
    runs = sampled_rows(3072, 32)
    assert len(runs) == 4 and all(b - a == 8 for a, b in runs)
    assert runs[0][0] == 0 and runs[-1][1] == 3072  # from the first row to the last


def test_all_rows_sampled_is_the_whole_weights_error() -> None:
    sd = random_state_dict(TINY, seed=5)
    table = estimate_costs(TINY, state_dict_source(sd, "tiny"), TYPES, rows_per_weight=10**6)
    for qtype in TYPES:
        np.testing.assert_allclose([table.mean(b, qtype) for b in range(TINY.n_blocks)],
                                   full_weight_errors(TINY, sd, qtype), rtol=1e-6)  # float32 squares
    assert table.measure == ESTIMATED and table.estimated and table.samples == []


def test_sampled_estimate_is_close_and_keeps_the_order() -> None:
    sd = random_state_dict(TINY, seed=6)
    table = estimate_costs(TINY, state_dict_source(sd, "tiny"), TYPES, rows_per_weight=32)
    for qtype in TYPES:
        full = full_weight_errors(TINY, sd, qtype)
        np.testing.assert_allclose([table.mean(b, qtype) for b in range(TINY.n_blocks)], full, rtol=0.15)
    for b in range(TINY.n_blocks):  # more bits, less error, in every block
        assert table.mean(b, "Q8_0") < table.mean(b, "Q4_K") < table.mean(b, "Q3_K")


def test_importance_weighs_the_errors() -> None:
    """An importance matrix scaled by c quantizes to the same bytes (ggml's search is scale-free in
    it) and weighs every squared error by c: the estimate scales by c."""
    sd = random_state_dict(TINY, seed=7)
    source = state_dict_source(sd, "tiny")
    ones, twos = Imatrix(), Imatrix()
    for key, w in sd.items():
        if TINY.is_quantizable(key, w.shape):
            ones.sums[key], ones.counts[key] = np.ones(w.shape[1]), 1
            twos.sums[key], twos.counts[key] = np.full(w.shape[1], 2.0), 1
    a = estimate_costs(TINY, source, ["Q4_K"], ones, "ones")
    b = estimate_costs(TINY, source, ["Q4_K"], twos, "twos")
    np.testing.assert_allclose([b.mean(i, "Q4_K") for i in range(6)], [2 * a.mean(i, "Q4_K") for i in range(6)],
                               rtol=1e-9)
    assert a.provenance["imatrix"] == "ones"


def test_rows_read_alone(tmp_path: Path) -> None:
    sd = random_state_dict(TINY, seed=8)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with open_safetensors(tmp_path / "m.safetensors", hash_file=False) as source:
        key = "double_blocks.0.img_attn.qkv.weight"
        assert torch.equal(source.rows(key, 100, 108), sd[key][100:108])
        assert torch.equal(source.rows(key, 760, 800), sd[key][760:])


def test_estimates_and_measurements_do_not_merge(tmp_path: Path) -> None:
    from test_costs import table as measured_table

    estimate = estimate_costs(TINY, state_dict_source(random_state_dict(TINY), "tiny"), ["Q8_0"])
    with pytest.raises(CostError, match="different measures"):
        estimate.merged(measured_table())


def test_cli_estimates_where_no_table_fits(tmp_path: Path) -> None:
    """A family without a built-in table converts to a target on costs estimated from its weights;
    the file says so, and ``estimate`` writes such a table for later use."""
    wan = FAMILIES["wan"].model()
    src = tmp_path / "tiny-wan.safetensors"
    save_file(random_state_dict(wan), str(src))
    r = run_cli("convert", str(src), "--bpw", "13", "-o", str(tmp_path / "w.gguf"))
    assert r.returncode == 0, r.stderr
    assert "estimated cost (weight error)" in r.stdout and "costs: estimated from the weights" in r.stderr
    summary = json.loads(run_cli("inspect", str(tmp_path / "w.gguf"), "--json").stdout)
    assert summary["family"] == "wan" and summary["costs"] == "estimated from the weights"
    assert summary["metadata"]["general.architecture"] == "wan"
    r = run_cli("estimate", str(src), "-o", str(tmp_path / "wan.costs.json"), "--types", "Q8_0", "Q4_K")
    assert r.returncode == 0, r.stderr
    table = load_costs(tmp_path / "wan.costs.json")
    assert table.estimated and table.types == ["Q8_0", "Q4_K"] and table.n_blocks == wan.n_blocks
