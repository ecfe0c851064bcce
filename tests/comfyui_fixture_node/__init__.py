"""Test-only ComfyUI nodes for the pack's integration tests (never shipped as a node).

- ``MxTestConditioning``: random conditioning shaped for the connected MODEL's family (text
  states of its width; FLUX.1's pooled vector and guidance, Chroma's guidance, Lumina 2's
  attention mask), so no text encoder is needed.
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


# Where each family's diffusion model takes its text states: the first layer reading them.
TEXT_INPUTS = ("txt_in", "text_embedding.0", "cap_embedder.1")


def _text_width(diffusion_model) -> int:
    for path in TEXT_INPUTS:
        try:
            return int(diffusion_model.get_submodule(path).weight.shape[1])
        except AttributeError:
            continue
    raise ValueError(f"no text input layer ({', '.join(TEXT_INPUTS)}) in {type(diffusion_model).__name__}")


def _extras(model, tokens: int, gen: torch.Generator) -> dict:
    """What the family's model_base reads from a conditioning beside the text states."""
    kind = type(model.model).__name__
    vector_in = getattr(model.model.diffusion_model, "vector_in", None)
    if vector_in is not None:  # FLUX.1: CLIP's pooled vector and the distilled guidance
        return {"pooled_output": torch.randn((1, vector_in.in_layer.weight.shape[1]), generator=gen), "guidance": 3.5}
    if kind == "Chroma":  # no pooled vector; guidance is embedded (0, as real use passes)
        return {"pooled_output": None, "guidance": 0.0}
    if kind == "Lumina2":  # the text's length comes from its mask
        return {"attention_mask": torch.ones((1, tokens), dtype=torch.long)}  # as text encoders give it
    return {}


class MxTestConditioning:
    CATEGORY = "mxgguf/tests"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    def make(self, model, seed, tokens):
        width = _text_width(model.model.diffusion_model)
        out = []
        for i in range(2):
            gen = torch.Generator().manual_seed(seed + i)
            cond = torch.randn((1, tokens, width), generator=gen)
            out.append([[cond, _extras(model, tokens, gen)]])
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


NODE_CLASS_MAPPINGS = {"MxTestConditioning": MxTestConditioning, "MxTestModelReport": MxTestModelReport}
