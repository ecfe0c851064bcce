"""FLUX.1 models the tests use: the tiny one, stock widths (shallow), FLUX.1 [dev]'s full shape."""
from __future__ import annotations

from quant.models import Model
from quant.models.flux1 import Flux1, FluxConfig
from quant.recipe import Recipe
from quant.tensor_plan import average_bpw, plan_tensors

TINY = Flux1.model()  # hidden 256, 2 double + 4 single blocks
STOCK = Flux1.model("flux1-stock")  # FLUX.1's widths, 2 double + 4 single blocks
FLUX1_DEV = Flux1.model("flux1-dev")
TINY_TYPES = "Q8_0, Q6_K, Q5_K, Q4_K, Q3_K"  # the types the integration tests measure on TINY


def flux(base: Model = TINY, **fields: object) -> Model:
    """``base`` with some config fields changed."""
    return Flux1.model(base.config, **fields)


def midway_bpw(model: Model, low: str, high: str) -> float:
    """A target between two uniform types on this model (its embedders make bpw model-specific)."""
    shapes = model.shapes()
    lo, hi = (average_bpw(plan_tensors(model, shapes, Recipe.uniform(model, t))) for t in (low, high))
    return round((lo + hi) / 2, 2)


__all__ = ["TINY", "STOCK", "FLUX1_DEV", "TINY_TYPES", "FluxConfig", "flux", "midway_bpw"]
