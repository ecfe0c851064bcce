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

from ..quant import codecs
from ..quant.optimize import Target
from ..quant.plan import plan
from .chart import type_colours
from .common import BUILTIN_CHOICES, TARGETS, cost_table, costs_choices, costs_path

_registered = False


def plan_for(query: Mapping[str, str]) -> dict[str, Any]:
    """The plan ``?costs=&target=bpw|size_gb|card_gb&value=&types=`` asks for (``target`` may also
    be the Quantize node's label of it)."""
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
    answer = plan(cost_table(query["costs"]), Target.of(**{target: value}), allowed)
    return {**answer, "type_colors": type_colours(answer["blocks"])}  # as the node's chart draws them


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

