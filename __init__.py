"""mx GGUF: mixed-quantization GGUF for FLUX, as ComfyUI nodes.

ComfyUI imports this folder as a package. The method is in ``quant/`` (no ComfyUI
imports), usable headless as ``python -m quant``; the nodes that adapt it to ComfyUI
graphs are not in this release yet, so the pack registers none.
"""
NODE_CLASS_MAPPINGS: dict = {}
