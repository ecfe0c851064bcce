from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from quant.synthetic import TINY, random_state_dict


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A random FLUX.1-dev-layout checkpoint (hidden 256, 2 double + 4 single blocks), bf16."""
    path = tmp_path / "tiny-flux.safetensors"
    save_file(random_state_dict(TINY), str(path))
    return path
