"""Run by ``test_comfyui_families`` in ComfyUI's Python: for each model named on the command line
(a named configuration, or a family's ``tiny``), ComfyUI's own detection and model class are given
the family's tensor shapes (on the meta device: no memory) and build the model they describe.
Prints one JSON line: per model, the class ComfyUI chose and how its tensors differ from ours."""
import json
import sys

comfy_root, pack_root = sys.argv[1], sys.argv[2]
sys.path[:0] = [comfy_root, pack_root]
from comfy.cli_args import args  # noqa: E402

args.cpu = True  # before comfy.model_management picks a device
import torch  # noqa: E402

import comfy.model_detection  # noqa: E402
from quant.models import FAMILIES, NAMED_CONFIGS, Model  # noqa: E402


def compare(model: Model) -> dict:
    ours = model.shapes()
    state = {k: torch.empty(s, device="meta") for k, s in ours.items()}
    config = comfy.model_detection.model_config_from_unet(state, "")
    if config is None:
        return {"class": None}
    built = config.get_model(state, "", device="meta").diffusion_model.state_dict()
    theirs = {k: tuple(v.shape) for k, v in built.items()}
    return {"class": type(config).__name__, "only_ours": sorted(set(ours) - set(theirs)),
            "only_comfy": sorted(set(theirs) - set(ours)),
            "shapes": [[k, ours[k], theirs[k]] for k in ours if k in theirs and ours[k] != theirs[k]]}


models = {name: Model(*NAMED_CONFIGS[name]) if name in NAMED_CONFIGS else Model(FAMILIES[name], FAMILIES[name].tiny)
          for name in sys.argv[3:]}
print(json.dumps({name: compare(model) for name, model in models.items()}))
