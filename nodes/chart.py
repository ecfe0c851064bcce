"""The Quantize node's chart: per block, a bar as tall as its type's bits, coloured by type,
and a dot for its cost on a log scale; below, a strip of each block's dequantization time as
a share of the unquantized step. Drawn with Pillow (which ComfyUI ships)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..quant import codecs

# One colour per type, whatever else a plan holds, told apart at a glance: Kelly's colours of
# maximum contrast, neighbours in bits far apart in hue (F32 grey, 8 bits green, 4 orange, 3 red).
TYPE_COLOURS = {"F32": "#848482", "F16": "#a1caf1", "BF16": "#0067a5", "Q8_0": "#008856", "Q6_K": "#8db600",
                "Q5_K": "#f3c300", "Q5_1": "#c2b280", "Q5_0": "#654522", "Q4_K": "#f38400", "Q4_1": "#e68fac",
                "IQ4_NL": "#875692", "Q4_0": "#882d17", "IQ4_XS": "#604e97", "Q3_K": "#be0032", "Q2_K": "#2b3d26"}
_W_BAR, _H_PLOT, _TOP, _LEFT, _BOTTOM = 10, 220, 40, 48, 70
_H_SHARES = 60  # the step-time strip


def type_colours(types: Sequence[str]) -> dict[str, str]:
    """The colour of each type in a plan, by bits, most first (the canvas panel uses the same)."""
    return {t: TYPE_COLOURS[t] for t in sorted(set(types), key=lambda t: -codecs.bits_per_weight(t))}


def block_chart(types: Sequence[str], costs: Sequence[float | None], groups: Mapping[str, int], title: str,
                step_shares: Sequence[float] | None = None) -> torch.Tensor:
    """An IMAGE (1, H, W, 3) float tensor in [0, 1]. ``groups``: blocks per block group, in order;
    ``step_shares``: each block's dequantization time over the unquantized model's step time."""
    n = len(types)
    width = max(640, _LEFT + n * _W_BAR + 20)
    height = _TOP + _H_PLOT + _BOTTOM + (_H_SHARES + 30 if step_shares is not None else 0)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), title, fill="black")
    max_bits = max(codecs.bits_per_weight(t) for t in types)
    colours = type_colours(types)
    base = _TOP + _H_PLOT
    known = [c for c in costs if c is not None and c > 0]
    lo, hi = (math.log10(min(known)), math.log10(max(known))) if known else (0.0, 1.0)
    span = max(hi - lo, 1e-9)
    for b, (t, cost) in enumerate(zip(types, costs)):
        x = _LEFT + b * _W_BAR
        top = base - int(_H_PLOT * codecs.bits_per_weight(t) / max_bits)
        draw.rectangle([x, top, x + _W_BAR - 2, base], fill=colours[t])
        if cost is not None and cost > 0:
            y = base - int(_H_PLOT * (math.log10(cost) - lo) / span)
            draw.ellipse([x + 2, y - 2, x + 6, y + 2], fill="black")
    first = 0
    for n_group in list(groups.values())[:-1]:  # where each later group starts
        first += n_group
        x = _LEFT + first * _W_BAR - 1
        draw.line([x, _TOP, x, base], fill="#999999")
    draw.text((4, _TOP), f"{max_bits:.1f}b", fill="black")
    draw.text((4, base - 10), "0", fill="black")
    draw.text((_LEFT, base + 4), f"blocks: {' | '.join(groups)};  bars: bits per weight;  dots: cost (log)", fill="black")
    x = _LEFT
    for t, c in colours.items():
        draw.rectangle([x, base + 24, x + 10, base + 34], fill=c)
        draw.text((x + 14, base + 24), t, fill="black")
        x += 70
        if x > width - 70:
            break
    if step_shares is not None:
        _draw_shares(draw, types, step_shares, colours, base + _BOTTOM)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def _draw_shares(draw: ImageDraw.ImageDraw, types: Sequence[str], shares: Sequence[float], colours: dict[str, str],
                 top: int) -> None:
    """Per block, a bar for its dequantization time, on a scale labelled in percent of the step."""
    base = top + 16 + _H_SHARES
    peak = max(max(shares), 1e-12)
    draw.text((_LEFT, top), f"dequantization time per block, % of the unquantized step "
                            f"(sum {100 * sum(shares):.0f} %: predicted step {1 + sum(shares):.2f}x)", fill="black")
    for b, (t, share) in enumerate(zip(types, shares)):
        x = _LEFT + b * _W_BAR
        draw.rectangle([x, base - int(_H_SHARES * share / peak), x + _W_BAR - 2, base], fill=colours[t])
    draw.text((4, base - _H_SHARES), f"{100 * peak:.1f}%", fill="black")
    draw.text((4, base - 10), "0", fill="black")
