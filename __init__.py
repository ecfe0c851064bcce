"""mx GGUF: mixed-quantization GGUF for FLUX, as ComfyUI nodes.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint`` (V3 node API).
The method is in ``quant/`` (no ComfyUI imports), usable headless as ``python -m quant``;
``nodes/`` adapts it to ComfyUI graphs and ``web/`` shows the nodes' summaries.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import MxGGUFExtension  # imported only inside ComfyUI

    return MxGGUFExtension()
