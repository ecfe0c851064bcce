"""What flows through FLUX's block stack: a sample's inputs to it and the state between blocks.

The reference blocks (``flux1_blocks``, headless) run on these, and saved captures
(``quant.capture_file``) load into them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class StackInputs:
    """What enters the block stack for one sample: the captured hidden states."""

    img: Tensor  # (batch, img_tokens, hidden)
    txt: Tensor  # (batch, txt_tokens, hidden)
    vec: Tensor  # (batch, hidden): timestep + guidance + pooled text embedding
    pe: Tensor  # rotary position embedding for txt + img tokens


def join_inputs(samples: Sequence[StackInputs]) -> list[tuple[StackInputs, list[int]]]:
    """Samples of one shape joined into one batch: -> (batch, indices of the samples in it).

    Joining needs the same token counts and width; the rotary tables are kept once where
    they are one table shared by all (it broadcasts over the batch), else stacked per sample."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((tuple(s.img.shape[1:]), tuple(s.txt.shape[1:]), tuple(s.pe.shape[1:])), []).append(i)
    out = []
    for members in groups.values():
        part = [samples[i] for i in members]
        if len(part) == 1:
            out.append((part[0], members))
            continue
        first_pe = part[0].pe
        if first_pe.shape[0] == 1 and all(torch.equal(s.pe, first_pe) for s in part[1:]):
            pe = first_pe
        else:
            pe = torch.cat([s.pe.expand(s.img.shape[0], *s.pe.shape[1:]) for s in part])
        cat = lambda name: torch.cat([getattr(s, name) for s in part])  # noqa: E731
        out.append((StackInputs(cat("img"), cat("txt"), cat("vec"), pe), members))
    return out


@dataclass
class StackState:
    """Hidden states between two blocks: two streams before the single blocks, one after."""

    img: Tensor
    txt: Tensor | None = None  # None once the streams are joined (txt tokens lead img)
    txt_tokens: int = 0

    def image_tokens(self) -> Tensor:
        """The image tokens' hidden state (what the final layer reads)."""
        return self.img if self.txt is not None else self.img[:, self.txt_tokens:]
