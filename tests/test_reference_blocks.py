"""quant.models.flux1_blocks computes what ComfyUI's own FLUX blocks compute (skipped without ComfyUI)."""
from __future__ import annotations

import pytest

from comfyui_rig import PACK_ROOT, run_in_comfyui

pytestmark = pytest.mark.comfy
# Same weights and inputs in float32; the two differ only in attention kernels and the
# order of a few float ops, so outputs agree to float32 rounding, far inside this bound.
TOLERANCE = 1e-5


def test_reference_blocks_match_comfyui() -> None:
    result = run_in_comfyui("comfyui_blocks_check.py", PACK_ROOT, timeout=300)
    assert result["pe_max_abs"] == 0.0
    assert result["block_max_rel"] < TOLERANCE, result
