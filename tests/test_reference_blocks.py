"""quant.models.flux1_blocks computes what ComfyUI's own FLUX blocks compute (skipped without ComfyUI)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from comfyui_rig import PACK_ROOT, find_comfyui

pytestmark = pytest.mark.comfy
# Same weights and inputs in float32; the two differ only in attention kernels and the
# order of a few float ops, so outputs agree to float32 rounding, far inside this bound.
TOLERANCE = 1e-5


def test_reference_blocks_match_comfyui() -> None:
    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"real-ComfyUI integration test skipped: {found}")
    root, python = found
    script = Path(__file__).with_name("comfyui_blocks_check.py")
    r = subprocess.run([str(python), str(script), str(root), str(PACK_ROOT)], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["pe_max_abs"] == 0.0
    assert result["block_max_rel"] < TOLERANCE, result
