"""HTTP routes the pack adds to ComfyUI's server for its frontend: what a target means before
quantizing (``GET /mxgguf/plan``) and the costs files there are (``GET /mxgguf/costs``).

Answers are JSON; bad parameters, an unknown costs file or a target out of reach answer 400
with ``{"error": message}``. The work runs off the event loop (the allocator takes up to a
second), so the server keeps serving meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from comfy.model_management import get_torch_device

from ..quant import codecs
from ..quant.optimize import Target
from ..quant.plan import plan
from ..quant.speed import SpeedProfile, covers, device_name
from .chart import type_colours
from .common import (BUILTIN_CHOICES, TARGETS, cost_table, costs_choices, costs_path, kept_speed_profile,
                     stored_types)

_registered = False


def plan_for(query: Mapping[str, str]) -> dict[str, Any]:
    """The plan ``?costs=&target=bpw|size_gb|card_gb&value=&types=&max_slowdown=`` asks for
    (``target`` may also be the Quantize node's label of it). Where Quantize kept a speed profile of
    this server's device for the table's model, the answer has the predicted slowdown and each
    block's share of the step; a budget without one is refused, saying how to get one."""
    missing = [k for k in ("costs", "target", "value") if not query.get(k)]
    if missing:
        raise ValueError(f"missing parameter(s): {', '.join(missing)}")
    target = TARGETS.get(query["target"], query["target"])  # the node's label or the keyword
    if target not in TARGETS.values():
        raise ValueError(f"target must be one of {', '.join(TARGETS.values())} (or {', '.join(TARGETS)}), "
                         f"got {query['target']!r}")
    try:
        value = float(query["value"])
    except ValueError:
        raise ValueError(f"value must be a number, got {query['value']!r}") from None
    types = query.get("types", "all").strip()
    allowed = None if types.lower() in ("", "all") else codecs.parse_type_list(types)
    table = cost_table(query["costs"])
    max_slowdown = _max_slowdown(query.get("max_slowdown", ""))
    speed = _kept_profile(table, allowed)
    if max_slowdown is not None and speed is None:
        raise ValueError(f"no speed profile of this server's {device_name(get_torch_device())} for "
                         f"{table.family_model.describe()} is kept yet: queue Mixed GGUF Quantize on this model "
                         f"once (it measures the device and keeps the profile), and the plan follows the budget")
    answer = plan(table, Target.of(**{target: value}), allowed, speed, max_slowdown)
    return {**answer, "type_colors": type_colours(answer["blocks"])}  # as the node's chart draws them


def _max_slowdown(text: str) -> float | None:
    """The budget a query gives: 0 or absent is none (as on the node)."""
    try:
        value = float(text or 0)
    except ValueError:
        raise ValueError(f"max_slowdown must be a number, got {text!r}") from None
    return value if value > 0 else None


def _kept_profile(table, allowed) -> SpeedProfile | None:
    """The speed profile Quantize kept for the table's model on the device this server samples on,
    where it times every type the plan may choose."""
    model = table.family_model
    shapes = model.shapes()
    kept = kept_speed_profile(get_torch_device(), model)
    types = stored_types(model, shapes, allowed or table.types)
    return kept if kept is not None and covers(kept, model, shapes, types) else None


def costs_files() -> list[dict[str, Any]]:
    """Every costs choice with its sample count and, for files, when it last changed."""
    listed = []
    for name in costs_choices():
        entry: dict[str, Any] = {"name": name}
        try:
            entry["samples"] = len(cost_table(name).samples)
        except (OSError, ValueError) as e:
            entry["error"] = str(e)
        if name not in BUILTIN_CHOICES:
            with contextlib.suppress(OSError):  # gone since it was listed: the error above says so
                mtime = costs_path(name).stat().st_mtime
                entry["modified"] = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
        listed.append(entry)
    return listed


async def _answer(work, *args: Any) -> web.Response:
    try:
        return web.json_response(await asyncio.to_thread(work, *args))
    except (ValueError, OSError) as e:  # TargetError and CostError are ValueErrors
        return web.json_response({"error": str(e)}, status=400)


def register_routes() -> None:
    """Add the routes to ComfyUI's server (once; before it starts serving)."""
    global _registered
    if _registered:
        return
    from server import PromptServer  # ComfyUI's own module: imported only inside ComfyUI

    routes = PromptServer.instance.routes

    @routes.get("/mxgguf/plan")
    async def plan_route(request: web.Request) -> web.Response:
        return await _answer(plan_for, dict(request.rel_url.query))

    @routes.get("/mxgguf/costs")
    async def costs_route(request: web.Request) -> web.Response:
        return await _answer(costs_files)

    _registered = True

