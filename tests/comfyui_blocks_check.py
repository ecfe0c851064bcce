"""Run by test_reference_blocks.py with ComfyUI's Python: FLUX blocks from ComfyUI and from
quant.flux_blocks on the same weights and inputs; prints the largest differences as JSON."""
import json
import sys

import torch

comfy_root, pack_root = sys.argv[1], sys.argv[2]
sys.path[:0] = [comfy_root, pack_root]
from comfy.cli_args import args  # noqa: E402

args.cpu = not torch.cuda.is_available()  # before model_management picks a device
import comfy.ops  # noqa: E402
from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND, SingleStreamBlock  # noqa: E402

from quant.models import detect  # noqa: E402
from quant.checkpoint import state_dict_source  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack, position_embedding  # noqa: E402
from quant.models.flux1_stack import StackInputs  # noqa: E402
from quant.synthetic import random_state_dict
from quant.models.flux1 import Flux1  # noqa: E402

TINY = Flux1.model()
torch.manual_seed(0)
sd = {k: v.float() for k, v in random_state_dict(TINY, seed=4).items()}
arch = detect({k: tuple(v.shape) for k, v in sd.items()})
ours = ReferenceStack(arch, state_dict_source(sd, "tiny"))
ops = comfy.ops.disable_weight_init
heads, hidden = TINY.config.heads, TINY.config.hidden_size


def comfy_block(kind, i):
    block = (DoubleStreamBlock(hidden, heads, 4.0, qkv_bias=True, operations=ops) if kind == "double"
             else SingleStreamBlock(hidden, heads, 4.0, operations=ops))
    prefix = f"{kind}_blocks.{i}."
    block.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    return block.eval()


txt_tokens, img_tokens = 16, 64
ids = torch.zeros(1, txt_tokens + img_tokens, 3)
ids[0, txt_tokens:, 1] = torch.arange(8).repeat_interleave(8).float()
ids[0, txt_tokens:, 2] = torch.arange(8).repeat(8).float()
axes = [8, 28, 28]
pe_comfy = EmbedND(hidden // heads, 10000, axes)(ids)
pe_ours = position_embedding(ids, tuple(axes))
inputs = StackInputs(torch.randn(1, img_tokens, hidden), torch.randn(1, txt_tokens, hidden),
                     torch.randn(1, hidden), pe_ours)
result = {"pe_max_abs": (pe_comfy - pe_ours).abs().max().item()}
with torch.no_grad():
    state = ours.start(inputs)
    img, txt = inputs.img, inputs.txt
    worst = 0.0
    for b in range(arch.n_blocks):
        ref = state
        state = ours.forward(b, state, inputs)
        if b < arch.config.depth_double:
            img_c, txt_c = comfy_block("double", b)(img=ref.img.clone(), txt=ref.txt.clone(), vec=inputs.vec,
                                                     pe=pe_comfy)
            got, want = torch.cat([state.txt, state.img], 1), torch.cat([txt_c, img_c], 1)
        else:
            x = ref.img if ref.txt is None else torch.cat((ref.txt, ref.img), 1)
            want = comfy_block("single", b - arch.config.depth_double)(x.clone(), vec=inputs.vec, pe=pe_comfy)
            got = state.img
        worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
result["block_max_rel"] = worst
print(json.dumps(result))
