from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from quant.synthetic import random_state_dict
from flux_models import TINY


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A random FLUX.1-dev-layout checkpoint (hidden 256, 2 double + 4 single blocks), bf16."""
    path = tmp_path / "tiny-flux.safetensors"
    save_file(random_state_dict(TINY), str(path))
    return path


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory):
    """A real ComfyUI server with ComfyUI-GGUF and this pack; skipped, saying why, where none is installed."""
    from comfyui_rig import ComfyServer, find_comfyui

    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"real-ComfyUI integration test skipped: {found}")
    server = ComfyServer(*found, tmp_path_factory.mktemp("comfyui"))
    server.start()
    yield server
    server.stop()
