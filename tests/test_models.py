from __future__ import annotations

import math

import pytest

from flux_models import FLUX1_DEV, STOCK, TINY, flux
from quant.models import COMFY_PREFIX, ArchitectureError, detect


def test_flux1_dev_shape() -> None:
    arch = detect(FLUX1_DEV.shapes())
    assert arch == FLUX1_DEV and arch.n_blocks == 57 and arch.depths == {"double": 19, "single": 38}
    assert arch.describe() == "FLUX.1 [dev] (19 double + 38 single blocks, hidden 3072)"
    assert arch.block_of("double_blocks.18.img_mlp.0.weight") == 18
    assert arch.block_of("single_blocks.0.linear1.weight") == 19
    assert arch.block_of("single_blocks.37.linear2.weight") == 56
    assert arch.block_name(19) == "single_blocks.0"


def test_quantizable_params_match_flux1_dev() -> None:
    shapes = flux(FLUX1_DEV, depth_double=1, depth_single=1).shapes()
    arch = detect(shapes)
    per_block = [0, 0]
    outside_blocks = norm_scales = 0
    for key, shape in shapes.items():
        if arch.is_quantizable(key, shape):
            per_block[arch.block_of(key)] += math.prod(shape)
        elif arch.block_of(key) is None:
            outside_blocks += math.prod(shape)
        elif key.endswith(".scale"):
            norm_scales += math.prod(shape)
    # the published FLUX.1-dev figures: per-block quantizable params, and 64,144,448 kept
    # unquantized = everything outside blocks + 512 norm-scale params per double, 256 per single block
    assert per_block == [339_738_624, 141_557_760]
    assert norm_scales == 512 + 256
    assert outside_blocks + 19 * 512 + 38 * 256 == 64_144_448


def test_f32_policy() -> None:
    arch = detect(TINY.shapes())
    for key, shape in TINY.shapes().items():
        if key.startswith(("img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer")) \
                or key.endswith((".scale", ".bias")):
            assert not arch.is_quantizable(key, shape), key
    assert arch.is_quantizable("double_blocks.0.img_attn.qkv.weight", (768, 256))


def test_schnell_and_prefix() -> None:
    shapes = {COMFY_PREFIX + k: v for k, v in flux(FLUX1_DEV, guidance=False).shapes().items()}
    arch = detect(shapes)
    assert not arch.config.guidance and arch.prefix == COMFY_PREFIX and "[schnell]" in arch.describe()
    assert arch.strip_prefix(COMFY_PREFIX + "img_in.weight") == "img_in.weight"


def test_stock_width_detected() -> None:
    assert detect(STOCK.shapes()) == STOCK


@pytest.mark.parametrize("keys, message", [
    ({"single_transformer_blocks.0.attn.to_q.weight": (3072, 3072), "x_embedder.weight": (3072, 64)},
     "FLUX in the diffusers layout"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "SD1.x/SDXL"),
    ({"model.layers.0.self_attn.q_proj.weight": (4096, 4096)}, "language model"),
    ({"joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)}, "SD3"),
    ({"foo.weight": (3, 3)}, "found 1 tensors such as foo.weight"),
    ({}, "no tensors"),
])
def test_refuses_other_architectures(keys: dict, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        detect(keys)


@pytest.mark.parametrize("head_shape, message", [(None, r"norm.query_norm.scale has shape None"),
                                                 ((96,), r"expected \(head size,\) dividing 256")])
def test_refuses_unreadable_head_size(head_shape: tuple[int, ...] | None, message: str) -> None:
    """The head size comes from double block 0's query norm: without it, or not dividing the
    width, the attention the blocks compute is unknown."""
    shapes = dict(TINY.shapes())
    key = "double_blocks.0.img_attn.norm.query_norm.scale"
    if head_shape is None:
        del shapes[key]
    else:
        shapes[key] = head_shape
    with pytest.raises(ArchitectureError, match=message):
        detect(shapes)


def test_head_size_and_rotary_axes() -> None:
    config = detect(STOCK.shapes()).config
    assert (config.head_dim, config.heads, config.rope_axes) == (128, 24, (16, 56, 56))  # FLUX.1's axes_dim


def test_refuses_missing_blocks() -> None:
    shapes = {k: v for k, v in TINY.shapes().items() if not k.startswith("single_blocks.1.")}
    with pytest.raises(ArchitectureError, match=r"missing single_blocks \[1\]"):
        detect(shapes)
