"""mx GGUF: mixed-quantization GGUF for FLUX, as ComfyUI nodes.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. The method itself
is in ``quant/`` (no ComfyUI imports); ``nodes/`` adapts it to ComfyUI and is imported only
here, lazily, so the package imports cleanly outside ComfyUI (tests, CLI).
"""
WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
