"""Costs estimated from a checkpoint's weights alone, where no one has measured any.

A measured cost is the final hidden state's error with one block quantized: it needs the model
run on real inputs (Capture Layer Costs). A checkpoint alone tells how much quantizing changes
each weight. For an input x, a weight W quantized to Q(W) changes its output by (W - Q(W)) x,
whose expected square is the sum over rows i and columns j of (W - Q(W))_ij^2 E[x_j^2]. The
estimate of a block's cost is that sum over the block's quantizable weights, with E[x_j^2] from
an importance matrix where one is given (each input column's mean square), else 1. What it
cannot see is how the network downstream amplifies or damps a block's error, which measured
costs include: it compares blocks by weight error alone, and says so wherever it is shown.

Quantizing works row by row, so the error of a sample of rows, scaled by rows / rows sampled,
estimates the whole weight's without bias. ``rows_per_weight`` rows in ``RUNS`` runs spread
through the weight are read, and nothing else (seconds for a model of billions of parameters).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import codecs
from .checkpoint import Source
from .costs import ESTIMATED, CostTable, model_fingerprint
from .imatrix import Imatrix
from .models import Model
from .tensor_plan import tensor_type

ROWS_PER_WEIGHT = 32
RUNS = 4  # runs of consecutive rows per weight: reads stay few and large, rows spread through it
EstimateProgress = Callable[[int, int], None]  # (weights done, weights in all); may raise to cancel


def sampled_rows(n_rows: int, rows_per_weight: int = ROWS_PER_WEIGHT) -> list[tuple[int, int]]:
    """(start, stop) of ``RUNS`` runs of rows spread evenly through ``n_rows`` (all of them when few)."""
    if n_rows <= rows_per_weight:
        return [(0, n_rows)]
    run = rows_per_weight // RUNS
    starts = [round(i * (n_rows - run) / (RUNS - 1)) for i in range(RUNS)]
    return [(s, s + run) for s in starts]


def weight_error(w: torch.Tensor, qtype: str, importance: torch.Tensor | None) -> float:
    """Sum over ``w``'s values of the squared quantization error, each weighted by its column's importance."""
    x = w.to(torch.float32)
    err = codecs.dequantize(codecs.quantize(x, qtype, imatrix=importance), qtype, x.shape) - x
    err = err * err
    if importance is not None:
        err = err * importance.to(err.device)
    return float(err.sum(dtype=torch.float64))


def estimate_costs(model: Model, source: Source, types: Sequence[str], imatrix: Imatrix | None = None,
                   imatrix_name: str = "", rows_per_weight: int = ROWS_PER_WEIGHT,
                   device: torch.device | str = "cpu", progress: EstimateProgress | None = None) -> CostTable:
    """A cost table for ``model`` (in ``source``) from its weights: per block and type, the
    importance-weighted squared error quantizing brings to the block's weights (sampled rows,
    scaled to the whole weight)."""
    weights = [k for k, s in source.shapes.items()
               if k.startswith(model.prefix) and model.is_quantizable(model.strip_prefix(k), s)]
    totals = torch.zeros(model.n_blocks, len(types), dtype=torch.float64)
    for done, key in enumerate(weights, 1):
        name, shape = model.strip_prefix(key), source.shapes[key]
        runs = sampled_rows(shape[0], rows_per_weight)
        # A source that cannot read rows (one patched as a whole, in ComfyUI) is read once
        whole = None if source.read_rows else source.read(key)
        w = torch.cat([source.rows(key, a, b) if whole is None else whole[a:b] for a, b in runs]).to(device)
        scale = shape[0] / w.shape[0]
        importance = imatrix.importance(name) if imatrix is not None else None
        for j, qtype in enumerate(types):
            totals[model.block_of(name), j] += scale * weight_error(w, tensor_type(qtype, shape), importance)
        if progress:
            progress(done, len(weights))
    table = CostTable.empty(model_fingerprint(model, source), model.n_blocks, types)
    for b in range(model.n_blocks):
        for j, qtype in enumerate(types):
            table.add(b, qtype, float(totals[b, j]), 1)
    table.provenance = {"measure": ESTIMATED, "rows_per_weight": rows_per_weight, "checkpoint": source.name}
    if imatrix is not None:
        table.provenance["imatrix"] = imatrix_name or "given"
    return table
