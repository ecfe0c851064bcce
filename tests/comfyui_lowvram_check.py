"""Run by test_comfyui_loras.py with ComfyUI's Python: a LoRA'd tiny FLUX.1 loaded in low VRAM
(every weight patched as its layer runs), and Capture's view of one block's weights while swept.
Prints JSON: whether the swept weights were the patched ones, how the layer ran a swapped-in
value, what the plain view would have run, and whether everything was put back."""
import importlib.util
import json
import sys
from pathlib import Path

import torch

comfy_root, pack_root = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfy_root)
from comfy.cli_args import args  # noqa: E402

args.cpu = True  # before model_management picks a device
import comfy.lora  # noqa: E402
import comfy.sd  # noqa: E402
from comfy.model_patcher import LowVramPatch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import comfyui_fixture_node  # noqa: E402,F401  (ComfyUI's FLUX detection, taught narrow widths)

spec = importlib.util.spec_from_file_location("mxgguf_pack", Path(pack_root) / "__init__.py",
                                              submodule_search_locations=[pack_root])
sys.modules["mxgguf_pack"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["mxgguf_pack"])
from mxgguf_pack.nodes.capture import LoadedBlockWeights  # noqa: E402
from mxgguf_pack.quant.models.flux1 import Flux1  # noqa: E402
from mxgguf_pack.quant.replay import ModuleWeights  # noqa: E402
from mxgguf_pack.quant.sweep import quantized_weights  # noqa: E402
from mxgguf_pack.quant.synthetic import random_lora, random_state_dict  # noqa: E402

TINY = Flux1.model()
NAME, KEY = "img_attn.qkv.weight", "diffusion_model.double_blocks.0.img_attn.qkv.weight"
model = comfy.sd.load_diffusion_model_state_dict(random_state_dict(TINY, seed=3))
model, _ = comfy.sd.load_lora_for_models(model, None, random_lora(TINY, [KEY.removeprefix("diffusion_model.")],
                                                                  alpha=4.0), 1.0, 0)
model.load(torch.device("cpu"), lowvram_model_memory=1, full_load=False)  # every layer in low VRAM
block = model.model.diffusion_model.double_blocks[0]
layer = block.img_attn.qkv
original, functions = layer.weight, list(layer.weight_function)
patched = comfy.lora.calculate_weight(model.patches[KEY], original.detach().float().clone(), KEY)
x = torch.randn(3, layer.in_features, dtype=original.dtype)


def run_swapped(weights) -> tuple[torch.Tensor, torch.Tensor]:
    """(the Q4_K value swapped in, the layer's output while it is in), as the sweep swaps and restores."""
    q = quantized_weights(weights, "Q4_K")[NAME]
    held = weights[NAME]
    weights[NAME] = q
    with torch.no_grad():
        y = layer(x)
    weights[NAME] = held
    return q, y


def as_swapped(q: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, q.to(x.dtype), layer.bias.to(x.dtype))


with LoadedBlockWeights(block, [NAME], torch.device("cpu")) as weights:
    swept_value = weights[NAME]
    q, y = run_swapped(weights)
q_plain, y_plain = run_swapped(ModuleWeights(block, [NAME]))
print(json.dumps({
    "run_time_patched": any(isinstance(f, LowVramPatch) for f in functions),
    "swept_the_patched_weight": torch.equal(swept_value.float(), patched),
    "runs_as_swapped": (y - as_swapped(q)).abs().max().item(),
    "plain_view_runs": (y_plain - as_swapped(q_plain)).abs().max().item(),
    "restored": layer.weight is original and layer.weight_function == functions,
}))
