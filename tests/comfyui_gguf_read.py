"""Run by ``test_comfyui_families`` in ComfyUI's Python: ComfyUI-GGUF's own loader
(``gguf_sd_loader``) reads a GGUF the pack wrote. Prints one JSON line: the architecture it
accepted, and each tensor's shape and type as it hands them to ComfyUI."""
import importlib
import importlib.util
import json
import sys

comfy_root, gguf_path = sys.argv[1], sys.argv[2]
sys.path[:0] = [comfy_root]
from comfy.cli_args import args  # noqa: E402

args.cpu = True
folder = f"{comfy_root}/custom_nodes/ComfyUI-GGUF"
# Its package without running its __init__ (which registers nodes): only the loader is wanted.
spec = importlib.util.spec_from_file_location("comfyui_gguf", f"{folder}/__init__.py", submodule_search_locations=[folder])
sys.modules["comfyui_gguf"] = importlib.util.module_from_spec(spec)
loader = importlib.import_module("comfyui_gguf.loader")

state, arch = loader.gguf_sd_loader(gguf_path, return_arch=True)
print(json.dumps({"arch": arch, "tensors": {k: [list(getattr(v, "tensor_shape", v.shape)),
                                                 getattr(getattr(v, "tensor_type", None), "name", "F32")]
                                            for k, v in state.items()}}))
