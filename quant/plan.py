"""What a target means before anything is quantized: the least-cost allocation for a cost
table's model, as the numbers a user reads (``optimize --json``, the Quantize node's panel).

A cost table records its model's widths and depths, not its tensors: the plan is computed
for FLUX.1's tensor shapes at those widths, which is every FLUX.1 checkpoint's layout.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .arch import FluxArch, FluxConfig, detect, flux_shapes
from .costs import CostTable
from .optimize import GiB, Allocation, Target, optimize

# Card sizes a plan reports fitting (GB as cards are sold, GiB of memory).
CARD_SIZES_GB = (6, 8, 10, 12, 16, 20, 24, 32, 48, 80)


def table_model_shapes(model: dict[str, Any]) -> tuple[FluxArch, dict[str, tuple[int, ...]]]:
    """A cost table's model at FLUX.1's tensor shapes (for tables measured without a checkpoint at hand)."""
    shapes = flux_shapes(FluxConfig.from_fingerprint(model))
    return detect(shapes), shapes


def allocation_json(alloc: Allocation) -> dict[str, Any]:
    """``optimize --json``'s fields: bpw, size_bytes (tensor data), predicted_cost, blocks, and
    predicted_slowdown where a speed profile was given."""
    result: dict[str, Any] = {"bpw": alloc.bpw, "size_bytes": alloc.data_bytes,
                              "predicted_cost": alloc.predicted_cost, "blocks": list(alloc.types)}
    if alloc.predicted_slowdown is not None:
        result["predicted_slowdown"] = alloc.predicted_slowdown
    return result


def fits_cards(arch_params: int, data_bytes: int) -> list[int]:
    """The card sizes (GB) whose budget, as a card target counts it, holds ``data_bytes``."""
    return [gb for gb in CARD_SIZES_GB if data_bytes <= Target.of(card_gb=gb).data_budget(arch_params)]


def plan(table: CostTable, target: Target, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """The allocation for ``target`` on the table's model at FLUX.1's shapes: ``allocation_json``'s
    fields plus each block's cost, the size in GB and GiB, the cards it fits, and what the
    shapes are. TargetError where the target cannot be met."""
    arch, shapes = table_model_shapes(table.model)
    per_block = table.costs()
    alloc = optimize(arch, shapes, per_block, target, allowed)
    params = sum(math.prod(s) for s in shapes.values())
    return {**allocation_json(alloc),
            "block_costs": [per_block[b][t] for b, t in enumerate(alloc.types)],
            "size_gb": alloc.data_bytes / 1e9, "size_gib": alloc.data_bytes / GiB,
            "fits_cards_gb": fits_cards(params, alloc.data_bytes),
            "target": target.describe(), "depth_double": arch.depth_double,
            "shapes": f"FLUX.1 tensor shapes at hidden size {arch.hidden_size} ({params / 1e9:.2f} B parameters)"}

