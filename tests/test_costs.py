from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant.models import detect
from quant.checkpoint import state_dict_source
from quant.costs import (CostError, CostTable, accumulate, check_model, default_costs, load_costs,
                         model_fingerprint, resolve_costs, save_costs)
from quant.synthetic import random_state_dict
from flux_models import FLUX1_DEV, TINY, flux

ARCH = detect(TINY.shapes())


def fingerprint(seed: int = 0) -> dict:
    sd = random_state_dict(TINY, seed=seed)
    return model_fingerprint(ARCH, state_dict_source(sd, "seed"))


def table(seed: int = 0, value: float = 1.0, types=("Q8_0", "Q4_K")) -> CostTable:
    t = CostTable.empty(fingerprint(seed), ARCH.n_blocks, types)
    for b in range(ARCH.n_blocks):
        for q in types:
            t.add(b, q, value * (b + 1), 10)
    t.samples = [{"seed": seed}]
    return t


def test_merge_adds_sums_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    accumulate(path, table(value=1.0))
    total = accumulate(path, table(value=3.0, types=("Q8_0", "Q6_K")))
    assert total.mean(0, "Q8_0") == pytest.approx((1 + 3) / 20)
    assert total.mean(0, "Q6_K") == pytest.approx(3 / 10)
    assert total.mean(0, "Q4_K") == pytest.approx(1 / 10)
    assert total.mean(0, "Q2_K") is None
    assert len(load_costs(path).samples) == 2


def test_fingerprint_ignores_dtype() -> None:
    sd = random_state_dict(TINY)
    as_f32 = {k: v.float() for k, v in sd.items()}
    bf16, f32 = state_dict_source(sd, "bf16"), state_dict_source(as_f32, "f32")
    assert model_fingerprint(ARCH, bf16) == model_fingerprint(ARCH, f32)


def test_other_model_refused() -> None:
    with pytest.raises(CostError, match="different models .*weights_sha256"):
        table(seed=0).merged(table(seed=1))
    with pytest.raises(CostError, match="another model"):
        check_model(table(seed=0), fingerprint(seed=1))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["sse"][0].__setitem__(0, float("nan")), "bad cost nan"),
    (lambda d: d["sse"][1].__setitem__(1, -1.0), "bad cost -1.0"),
    (lambda d: d.__setitem__("types", ["Q8_0", "Q7_K"]), "unknown type 'Q7_K'"),
    (lambda d: d.update(types=[], sse=[], count=[]), "empty"),
    (lambda d: d.__setitem__("format", "other"), "not a cost table"),
    (lambda d: d["sse"].__setitem__(0, [1.0]), "block 0: 1 values for 2 types"),
])
def test_bad_tables(tmp_path: Path, edit, message: str) -> None:
    d = table().to_dict()
    edit(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(CostError, match=message):
        load_costs(tmp_path / "bad.json")


def test_builtin_flux1_dev() -> None:
    t = resolve_costs("builtin:flux1-dev")
    assert t.n_blocks == 57 and t.mean(0, "Q4_1") == pytest.approx(110.96)
    assert t.provenance["license"] == "Apache-2.0"
    assert default_costs({**FLUX1_DEV.fingerprint(), "weights_sha256": "abcd"}) is not None
    assert default_costs(fingerprint()) is None
    with pytest.raises(CostError, match="published table"):
        t.merged(t)
    with pytest.raises(CostError, match="no built-in cost table 'sdxl'"):
        resolve_costs("builtin:sdxl")


def test_tables_from_before_families_are_read(tmp_path: Path) -> None:
    """A table written before families recorded FLUX.1 as ``arch: flux`` with four fields: it is
    read as FLUX.1 at those fields (the rest at FLUX.1 [dev]'s) and merges with a new one."""
    old = table().to_dict()
    old["model"] = {"arch": "flux", "depth_double": 2, "depth_single": 4, "hidden_size": 256, "guidance": True}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_costs(tmp_path / "old.json")
    assert loaded.model == flux(FLUX1_DEV, depth_double=2, depth_single=4, hidden_size=256).fingerprint()
    old["model"]["arch"] = "sd3"
    (tmp_path / "other.json").write_text(json.dumps(old))
    with pytest.raises(CostError, match="arch 'sd3' is not 'flux'"):
        load_costs(tmp_path / "other.json")


def test_save_is_atomic_and_validated(tmp_path: Path) -> None:
    bad = table()
    bad.sse[0][0] = float("inf")
    with pytest.raises(CostError):
        save_costs(bad, tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []
