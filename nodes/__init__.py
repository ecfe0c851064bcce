"""The pack's ComfyUI nodes: thin adapters from ComfyUI's MODEL and graph to ``quant``."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .capture import CaptureLayerCosts
from .common import register_costs_folder
from .quantize import MixedGGUFQuantize
from .routes import register_routes
from .save import SaveMxGGUF


class MxGGUFExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_costs_folder()  # before the schemas list its files
        register_routes()
        return [CaptureLayerCosts, MixedGGUFQuantize, SaveMxGGUF]
