"""Test-only ComfyUI nodes for the pack's integration tests (never shipped as a node).

- ``MxTestFluxConditioning``: random FLUX conditioning (text states, pooled vector,
  guidance) shaped for the connected MODEL, so no text encoder is needed.
- A FLUX detection patch for narrow test models: ComfyUI reads FLUX's depths from a
  checkpoint but assumes FLUX.1's widths (hidden 3072, 24 heads, context 4096). Where the
  tensors say otherwise, the widths are taken from them; stock-width files come through
  exactly as ComfyUI detects them.
"""
import logging

import torch

import comfy.model_detection as detection

STOCK_WIDTHS = {"hidden_size": 3072, "num_heads": 24, "context_in_dim": 4096, "mlp_ratio": 4.0,
                "axes_dim": [16, 56, 56]}


def _widths_from_tensors(sd, prefix):
    hidden = int(sd[f"{prefix}img_in.weight"].shape[0])
    head_dim = int(sd[f"{prefix}double_blocks.0.img_attn.norm.key_norm.scale"].shape[0])
    side = head_dim * 7 // 16
    return {"hidden_size": hidden, "num_heads": hidden // head_dim,
            "context_in_dim": int(sd[f"{prefix}txt_in.weight"].shape[1]),
            "mlp_ratio": sd[f"{prefix}double_blocks.0.img_mlp.0.weight"].shape[0] / hidden,
            "axes_dim": [head_dim - 2 * side, side, side]}


_stock_detect = detection.detect_unet_config


def detect_unet_config(state_dict, key_prefix, metadata=None):
    config = _stock_detect(state_dict, key_prefix, metadata=metadata)
    if config and config.get("image_model") == "flux":
        widths = _widths_from_tensors(state_dict, key_prefix)
        if widths != STOCK_WIDTHS:
            logging.info(f"[mxgguf tests] narrow FLUX, widths from tensors: {widths}")
            config.update(widths)
    return config


detection.detect_unet_config = detect_unet_config


class MxTestFluxConditioning:
    CATEGORY = "mxgguf/tests"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    def make(self, model, seed, tokens):
        params = model.model.diffusion_model.params
        out = []
        for i in range(2):
            gen = torch.Generator().manual_seed(seed + i)
            cond = torch.randn((1, tokens, params.context_in_dim), generator=gen)
            pooled = torch.randn((1, params.vec_in_dim), generator=gen)
            out.append([[cond, {"pooled_output": pooled, "guidance": 3.5}]])
        return tuple(out)


class MxTestModelReport:
    """Which class and widths the loaded MODEL has (checks detection ran unpatched)."""

    CATEGORY = "mxgguf/tests"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def report(self, model):
        m = model.model
        config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                  for k, v in m.model_config.unet_config.items()}
        return {"ui": {"report": [{"model_class": type(m).__name__, "config": config}]}}


NODE_CLASS_MAPPINGS = {"MxTestFluxConditioning": MxTestFluxConditioning, "MxTestModelReport": MxTestModelReport}
