"""A MODEL's weight patches (LoRA loaders upstream) as Quantize bakes them and the files record them.

ComfyUI keeps a LoRA as patches beside the weights and applies them only while the model is
loaded, in place, rounded to the weight's dtype. Quantize instead reads each base weight as
ComfyUI loaded it, applies the patches with ComfyUI's own ``calculate_weight`` at float32, one
tensor at a time, and quantizes that. The patches hold no file names: those come from the LoRA
loaders on the MODEL line of the prompt ComfyUI runs.
"""
from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

import comfy.lora
import folder_paths

from ..quant.checkpoint import Source
from ..quant.lora import TEXT_ENCODER
from ..quant.patches import BakedLora, patched_source
from .common import PREFIX


def refuse_hooks(model) -> None:
    """Scheduled LoRAs (hooks) change the weights per conditioning while sampling: no one file holds them."""
    if getattr(model, "hook_patches", None):
        raise ValueError("this MODEL carries scheduled LoRA hooks (applied per conditioning while sampling); "
                         "one file cannot hold them: bake a LoRA with a LoRA loader on the MODEL line instead")


def patched(model, source: Source) -> Source:
    """``source`` (the base weights) with the MODEL's weight patches applied as each tensor is read,
    by ComfyUI's own weight math at float32, on the model's load device."""
    patches = {key.removeprefix(PREFIX): p for key, p in model.patches.items()}
    if not patches:
        return source

    def patch(key: str, weight: torch.Tensor, _start: int) -> torch.Tensor:  # always the whole weight
        return comfy.lora.calculate_weight(patches[key], weight, PREFIX + key, intermediate_dtype=torch.float32)

    return patched_source(source, patch, patches, model.load_device)


def without_patches(model, keys: Collection[str]):
    """A clone without the patches of ``keys`` (diffusion-model keys): their weights come baked in."""
    out = model.clone()
    out.patches = {k: p for k, p in out.patches.items() if k.removeprefix(PREFIX) not in keys}
    out.patches_uuid = uuid.uuid4()  # a new uuid: ComfyUI reloads, unpatching what the old patches did
    return out


def baked_loras(model, prompt: Mapping | None, node_id: str | None) -> list[BakedLora]:
    """What the patches of ``model`` (the input of node ``node_id``) are: the LoRA loaders on its
    MODEL line, first applied first (those whose LoRA holds only text-encoder keys change the
    CLIP, not this model). A loader whose LoRA names none of the model's tensors is refused:
    ComfyUI ignores such a LoRA, and the file would claim it."""
    loaders = [(name, strength) for name, strength in upstream_loras(prompt, node_id) if strength != 0]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {}) if loaders else {}
    named = []
    for name, strength in loaders:
        target = lora_target(name, key_map)
        if target == "none":
            raise ValueError(f"LoRA {BakedLora(name, strength).describe()} matches no tensor of this model, so "
                             f"ComfyUI leaves it out: a LoRA for another model? Remove it or load one made for "
                             f"this model")
        if target == "model":
            named.append(BakedLora(name, strength))
    if not model.patches:
        return []
    if not named:  # patches no LoRA loader made (a merge, a custom node): say so rather than name nothing
        return [BakedLora(f"weight patches on {len(model.patches)} tensors (no LoRA loader upstream)", None)]
    return named


def upstream_loras(prompt: Mapping | None, node_id: str | None) -> list[tuple[str, float | None]]:
    """(lora_name, model strength) of each node with a ``lora_name`` on the MODEL line into
    ``node_id``, upstream first; a strength set by a link is None."""
    found, seen = [], set()
    node = prompt.get(str(node_id)) if prompt and node_id is not None else None
    while node is not None:
        link = node.get("inputs", {}).get("model")
        if not isinstance(link, list) or len(link) != 2 or str(link[0]) in seen:
            break
        seen.add(str(link[0]))
        node = prompt.get(str(link[0]))
        inputs = node.get("inputs", {}) if node else {}
        if isinstance(inputs.get("lora_name"), str):
            strength = inputs.get("strength_model", inputs.get("strength"))
            found.append((inputs["lora_name"], float(strength) if isinstance(strength, (int, float)) else None))
    return found[::-1]


def lora_target(lora_name: str, key_map: Mapping[str, str]) -> str:
    """"model" where a key of the LoRA file starts with a module name ComfyUI maps onto the model
    (``<module>.`` or ``<module>_lora.``, as its loader reads them), "text encoder" where every key
    is a text encoder's, else "none". Only the header is read; a file that is not safetensors is
    given the benefit of the doubt."""
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None or Path(path).suffix != ".safetensors":
        return "model"
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
    if any(key[:i] in key_map for key in keys for i, c in enumerate(key) if c == "." or key.startswith("_lora.", i)):
        return "model"
    return "text encoder" if keys and all(TEXT_ENCODER.match(key) for key in keys) else "none"
