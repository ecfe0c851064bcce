"""The scale searches of the K-quants and IQ4 as Triton kernels, for tensors on a GPU, with
and without an importance matrix (which adds ``make_qp_quants``, the super-block fit, and
gives the legacy types a search too).

Run as torch ops, each search is hundreds of small kernels per chunk: on a GPU that is
launch-bound, 1-5 % of the legacy types' speed. Here one program handles a vector of
sub-blocks and walks its positions in order, keeping every sum in registers: one kernel
per search.

Same bytes as ggml, for the reasons the torch steps give, plus three of the GPU's own:
- no fused multiply-adds: kernels are built with ``enable_fp_fusion=False``;
- division and square root correctly rounded (``div_rn``, ``sqrt_rn``; Triton's ``/`` is
  an approximate division);
- ``nearest_int`` as ggml writes it, ``(v + 1.5*2^23) - 1.5*2^23`` (exact once nothing
  contracts); beyond 2^22 it is off, but every such value is then clamped to a level far
  smaller, where it lands as a correctly rounded one would.
Sums run position by position, as the C loops do. No libdevice call is used (its flush-
to-zero setting is Triton's own).

Under ``TRITON_INTERPRET=1`` the kernels run on the CPU with numpy: that is how the tests
check them against ggml byte for byte on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from .fused import enabled

log = logging.getLogger(__name__)

LANES = 128  # sub-blocks per program: one per thread of four warps
INTERPRETED_LANES = 1 << 14  # numpy pays per operation, not per lane


@functools.cache
def _kernels() -> Any:
    """The kernel module, built on first use (importing Triton takes a while); None without Triton."""
    try:
        from . import triton_kernels
    except ImportError as e:
        log.warning("mxgguf: Triton is unavailable (%s); on a GPU the K-quant and IQ4 searches run as "
                    "torch ops, same bytes, far slower", e)
        return None
    return triton_kernels


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def applies(x: torch.Tensor) -> bool:
    """Whether ``x``'s search runs as a Triton kernel: on a GPU with Triton (or interpreted, for the tests)."""
    return (x.is_cuda or interpreting()) and enabled() and _kernels() is not None


def _launch(kernel: Any, m: int, x: torch.Tensor, *args: Any, **constants: Any) -> None:
    """``kernel`` over ``m`` sub-blocks of ``x`` (then ``args``), on x's GPU."""
    lanes = INTERPRETED_LANES if interpreting() else LANES
    grid = (max(1, -(-m // lanes)),)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](x, *args, m, LANES=lanes, num_warps=4, enable_fp_fusion=False, **constants)


def _f32_table(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def qkx2(xs: torch.Tensor, nmax: int, numerators: Sequence[float], weights: str | torch.Tensor, use_mad: bool
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_qkx2_quants`` over position-first sub-blocks ``xs`` (n, m), with the weights
    ggml gives them: ``"rms+abs"`` (Q4_K, Q5_K: rms of the sub-block + |x|), ``"abs"`` (Q2_K)
    or importance weights given, position-first (n, m).
    -> (scale (m,), the_min (m,), levels (n, m) int32)."""
    n, m = xs.shape
    k = _kernels()
    given = isinstance(weights, torch.Tensor)
    mode = k.GIVEN_WEIGHTS if given else k.RMS_WEIGHTS if weights == "rms+abs" else k.ABS_WEIGHTS
    scale = torch.empty(m, dtype=torch.float32, device=xs.device)
    the_min = torch.empty_like(scale)
    levels = torch.empty((n, m), dtype=torch.int32, device=xs.device)
    _launch(k.qkx2_kernel, m, xs, weights if given else xs, _f32_table(numerators, xs.device), scale, the_min, levels,
            N_STEPS=len(numerators), N=n, NMAX=nmax, WEIGHTS=mode.value, USE_MAD=use_mad)
    return scale, the_min, levels


def qx(xt: torch.Tensor, nmax: int, numerators: Sequence[float],
       wt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qx_quants(rmse_type=1)`` over position-first sub-blocks ``xt`` (n, m), weighted by
    ``wt`` (n, m) or x^2; candidate ``s`` is ``numerators[s] / max``. -> (scale (m,), levels
    (n, m) float in 0..2*nmax-1)."""
    n, m = xt.shape
    scale = torch.empty(m, dtype=torch.float32, device=xt.device)
    levels = torch.empty((n, m), dtype=torch.float32, device=xt.device)
    _launch(_kernels().qx_kernel, m, xt, xt if wt is None else wt, _f32_table(numerators, xt.device), scale, levels,
            N_CANDIDATES=len(numerators), N=n, NMAX=nmax, HAS_W=wt is not None)
    return scale, levels


def q3(xt: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_q3_quants(do_rmse=true)`` over position-first sub-blocks ``xt`` (n, m).
    -> (scale (m,), levels (n, m) float in 0..2*nmax-1)."""
    n, m = xt.shape
    scale = torch.empty(m, dtype=torch.float32, device=xt.device)
    levels = torch.empty((n, m), dtype=torch.float32, device=xt.device)
    _launch(_kernels().q3_kernel, m, xt, scale, levels, N=n, NMAX=nmax)
    return scale, levels


def qp(xt: torch.Tensor, wt: torch.Tensor, nmax: int, numerators: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qp_quants`` over position-first rows ``xt`` (n, m) weighted by ``wt`` (n, m); candidate
    ``s`` is ``numerators[s] / max``. -> (scale (m,), levels (n, m) int32 as C's uint8 holds them)."""
    n, m = xt.shape
    scale = torch.empty(m, dtype=torch.float32, device=xt.device)
    levels = torch.empty((n, m), dtype=torch.int32, device=xt.device)
    _launch(_kernels().qp_kernel, m, xt, wt, _f32_table(numerators, xt.device), scale, levels,
            N_CANDIDATES=len(numerators), N=n, NMAX=nmax)
    return scale, levels


def iq4_scales(xt: torch.Tensor, first_value: int, tries: Sequence[float], midpoints: Sequence[float],
               steps: Sequence[float], wt: torch.Tensor | None = None) -> torch.Tensor:
    """The IQ4 scale search over position-first 32-value blocks ``xt`` (32, m), weighted by
    ``wt`` (32, m) or x^2: the first guess ``-max/first_value``, then ``tries[t] / max``; the
    table value of x is ``first_value`` plus ``steps[k]`` for each of ``midpoints[k] <= x``. -> d (m,)."""
    n, m = xt.shape
    d = torch.empty(m, dtype=torch.float32, device=xt.device)
    _launch(_kernels().iq4_kernel, m, xt, xt if wt is None else wt, _f32_table(tries, xt.device),
            _f32_table(midpoints, xt.device), _f32_table(steps, xt.device), d, N_TRIES=len(tries), N=n,
            FIRST=float(first_value), N_MIDPOINTS=len(midpoints), HAS_W=wt is not None)
    return d


def row_square_sums(rows: torch.Tensor) -> torch.Tensor:
    """Each row's ``sum(x*x)`` in order from 0 in float32, for contiguous ``rows`` (m, n) of any
    float type; one kernel where the torch steps take one launch per column. -> (m,)."""
    m, n = rows.shape
    out = torch.empty(m, dtype=torch.float32, device=rows.device)
    _launch(_kernels().row_square_sums_kernel, m, rows, out, N=n)
    return out

