"""What a target means before anything is quantized: the least-cost allocation for a cost
table's model, as the numbers a user reads (``optimize --json``, the Quantize node's panel).

A cost table records its model's family and config, not its tensors: the plan is computed
for the family's tensor shapes at that config, which is every checkpoint of that layout.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .costs import CostTable
from .models import Model
from .optimize import GiB, Allocation, Target, optimize
from .speed import SpeedProfile
from .tensor_plan import plan_tensors

# Card sizes a plan reports fitting (GB as cards are sold, GiB of memory).
CARD_SIZES_GB = (6, 8, 10, 12, 16, 20, 24, 32, 48, 80)


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


def plan(table: CostTable, target: Target, allowed: Sequence[str] | None = None, speed: SpeedProfile | None = None,
         max_slowdown: float | None = None) -> dict[str, Any]:
    """The allocation for ``target`` (and, given, a slowdown budget on ``speed``'s device) on the
    table's model at its family's shapes: ``allocation_json``'s fields plus each block's cost, the
    size in GB and GiB, the cards it fits, what the shapes are and, with ``speed``, each block's
    dequantization time as a share of the unquantized step. TargetError where it cannot be met."""
    model = table.family_model
    shapes = model.shapes()
    per_block = table.costs()
    alloc = optimize(model, shapes, per_block, target, allowed, speed=speed, max_slowdown=max_slowdown)
    params = sum(math.prod(s) for s in shapes.values())
    shares = {}
    if speed is not None:
        step = speed.step_seconds(model)
        times = speed.block_dequant(plan_tensors(model, shapes, alloc.recipe), model.n_blocks)
        shares = {"block_step_shares": [t / step for t in times]}
    return {**allocation_json(alloc), **shares,
            "block_costs": [per_block[b][t] for b, t in enumerate(alloc.types)],
            "size_gb": alloc.data_bytes / 1e9, "size_gib": alloc.data_bytes / GiB,
            "fits_cards_gb": fits_cards(params, alloc.data_bytes),
            "target": target.describe(), "family": model.family.name, "groups": group_starts(model),
            "shapes": f"{model.describe()}: {params / 1e9:.2f} B parameters"}


def group_starts(model: Model) -> list[dict[str, Any]]:
    """Each block group's name and first block index, for charts that mark where groups begin."""
    starts, first = [], 0
    for group, n in model.depths.items():
        starts.append({"name": group, "first": first, "blocks": n})
        first += n
    return starts

