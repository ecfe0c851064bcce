"""FLUX.1 models the tests use: the tiny one, stock widths (shallow), FLUX.1 [dev]'s full shape."""
from __future__ import annotations

from quant.models import Model
from quant.models.flux1 import Flux1, FluxConfig

TINY = Flux1.model()  # hidden 256, 2 double + 4 single blocks
STOCK = Flux1.model("flux1-stock")  # FLUX.1's widths, 2 double + 4 single blocks
FLUX1_DEV = Flux1.model("flux1-dev")


def flux(base: Model = TINY, **fields: object) -> Model:
    """``base`` with some config fields changed."""
    return Flux1.model(base.config, **fields)


__all__ = ["TINY", "STOCK", "FLUX1_DEV", "FluxConfig", "flux"]
