from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from quant.synthetic import random_state_dict
from flux_models import TINY, TINY_TYPES


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


@pytest.fixture(scope="session")
def tiny(comfy) -> str:
    """A random TINY checkpoint in the server's diffusion_models."""
    save_file(random_state_dict(TINY, seed=11), str(comfy.models / "nodes-tiny.safetensors"))
    return "nodes-tiny.safetensors"


@pytest.fixture(scope="session")
def tiny_costs(comfy, tiny: str) -> str:
    """Costs measured by Capture on the tiny model, in models/mxgguf_costs."""
    from comfyui_rig import capture, loader, sampling

    comfy.run({"load": loader(tiny), "capture": capture(["load", 0], "tiny-costs", TINY_TYPES),
               **sampling(["capture", 0], 1, "nodes/costs")})
    return "tiny-costs.json"

