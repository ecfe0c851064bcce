"""Saved captures: one sample's stack inputs as a safetensors file, with what the sample was.

Capture Layer Costs writes them (``save_inputs``): the tensors that entered the model's first
block, by the keyword it took them under (FLUX.1's ``img``, ``txt``, ``vec``, ``pe``).
``costs --inputs`` and ``imatrix`` read FLUX.1's back headless. A file of another format,
another family or another model width is refused by name.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic import atomic_output
from .models.flux1_stack import StackInputs


CAPTURE_FORMAT = "mxgguf-capture/1"


class CaptureError(ValueError):
    """A saved capture that cannot be used with this model."""


def save_capture(path: str | os.PathLike[str], tensors: Mapping[str, Tensor], sample: Mapping[str, object]) -> None:
    """Write one sample's block inputs (and what it was: step, sigma, seed...) as safetensors, atomically."""
    meta = {"format": CAPTURE_FORMAT, "sample": json.dumps(dict(sample))}
    with atomic_output(Path(path), overwrite=False) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_capture(path: str | os.PathLike[str], hidden_size: int) -> tuple[StackInputs, dict]:
    """A saved capture's inputs and its sample description; refuses files for another width."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CAPTURE_FORMAT:
                raise CaptureError(f"{Path(path).name} is not a saved capture (format {meta.get('format')!r})")
            missing = {"img", "txt", "vec", "pe"} - set(f.keys())
            if missing:
                raise CaptureError(f"{Path(path).name} holds no FLUX.1 block inputs ({', '.join(sorted(missing))} "
                                   f"missing): it was captured on another family")
            t = {k: f.get_tensor(k) for k in ("img", "txt", "vec", "pe")}
    except (OSError, SafetensorError) as e:
        raise CaptureError(f"{Path(path).name}: not a readable capture ({e})") from None
    if t["img"].shape[-1] != hidden_size:
        raise CaptureError(f"{Path(path).name} was captured on a model of hidden size {t['img'].shape[-1]}, "
                           f"this one has {hidden_size}")
    return StackInputs(t["img"], t["txt"], t["vec"], t["pe"]), json.loads(meta.get("sample", "{}"))
