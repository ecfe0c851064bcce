"""Triton kernels of the scale searches (see ``triton_search`` for why they give ggml's bytes).

Every kernel takes sub-blocks (or rows) position-first, ``(N, m)`` contiguous: position ``j`` of
sub-blocks ``offs`` is ``ptr + j*m + offs``, so each load of a warp is one contiguous run.
Each program owns ``LANES`` sub-blocks and walks their positions in order; the operations
mirror the torch steps of ``kquants_affine``, ``kquants_symmetric`` and ``iq4`` one for one.
"""
from __future__ import annotations

import triton
import triton.language as tl

GROUP_MAX_EPS = tl.constexpr(1e-15)  # the compiler refuses a plain global (the interpreter allows it)


@triton.jit
def _nearest_int(v):
    """ggml's nearest_int (round half to even) as a float, exact for |v| < 2^22."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _clamped_level(v, lo, hi):
    return tl.minimum(tl.maximum(_nearest_int(v), lo), hi)


@triton.jit
def _signed_absmax(x_ptr, offs, mask, m, N: tl.constexpr):
    """The first value of largest magnitude, with its sign (+0 for all zeros), and that magnitude."""
    amax = tl.zeros(offs.shape, tl.float32)
    peak = tl.zeros(offs.shape, tl.float32)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        ax = tl.abs(xj)
        up = ax > amax
        amax = tl.where(up, ax, amax)
        peak = tl.where(up, xj, peak)
    return peak, amax


@triton.jit
def _lanes_and_peak(x_ptr, m, LANES: tl.constexpr, N: tl.constexpr):
    """This program's groups (one a lane) and each one's signed peak, 1.0 where the group is all
    but zero (``zero``: its scale and levels are stored as 0), so dividing by it stays finite."""
    offs = tl.program_id(0) * LANES + tl.arange(0, LANES)
    mask = offs < m
    peak, amax = _signed_absmax(x_ptr, offs, mask, m, N)
    zero = amax < GROUP_MAX_EPS
    return offs, mask, tl.where(zero, 1.0, peak), zero


# --- make_qkx2_quants: Q4_K, Q5_K, Q2_K --------------------------------------------------

# how make_qkx2_quants' caller weighs each value
ABS_WEIGHTS: tl.constexpr = tl.constexpr(0)  # |x| (Q2_K)
RMS_WEIGHTS: tl.constexpr = tl.constexpr(1)  # the sub-block's rms + |x| (Q4_K, Q5_K)
GIVEN_WEIGHTS: tl.constexpr = tl.constexpr(2)  # loaded from w_ptr (every importance path)


@triton.jit
def _qkx2_weight(w_ptr, j, offs, mask, m, xj, rms, WEIGHTS: tl.constexpr):
    if WEIGHTS == GIVEN_WEIGHTS:
        return tl.load(w_ptr + j * m + offs, mask=mask, other=0.0)
    elif WEIGHTS == RMS_WEIGHTS:
        return rms + tl.abs(xj)
    else:
        return tl.abs(xj)


@triton.jit
def _qkx2_error(x_ptr, w_ptr, offs, mask, m, rms, scale, offset, iscale, level_offset,
                N: tl.constexpr, NMAX: tl.constexpr, WEIGHTS: tl.constexpr, USE_MAD: tl.constexpr):
    """Weighted error of the levels ``iscale*(x - level_offset)`` dequantized as ``scale*l + offset``."""
    err = tl.zeros(offs.shape, tl.float32)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        level = _clamped_level(iscale * (xj - level_offset), 0.0, NMAX)
        diff = scale * level + offset - xj
        if USE_MAD:
            err = err + _qkx2_weight(w_ptr, j, offs, mask, m, xj, rms, WEIGHTS) * tl.abs(diff)
        else:
            err = err + _qkx2_weight(w_ptr, j, offs, mask, m, xj, rms, WEIGHTS) * (diff * diff)
    return err


@triton.jit
def qkx2_kernel(x_ptr, w_ptr, numerator_ptr, scale_ptr, min_ptr, levels_ptr, m, N_STEPS: tl.constexpr,
                LANES: tl.constexpr, N: tl.constexpr, NMAX: tl.constexpr, WEIGHTS: tl.constexpr, USE_MAD: tl.constexpr):
    offs = tl.program_id(0) * LANES + tl.arange(0, LANES)
    mask = offs < m
    rms = tl.zeros(offs.shape, tl.float32)
    if WEIGHTS == RMS_WEIGHTS:  # sqrtf(sum x^2 / 32), the sum from 0
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
            rms = rms + xj * xj
        rms = tl.sqrt_rn(rms * (1.0 / N))  # N is a power of two: exact
    x0 = tl.load(x_ptr + offs, mask=mask, other=0.0)
    hi = x0
    lo = x0
    sum_w = _qkx2_weight(w_ptr, 0, offs, mask, m, x0, rms, WEIGHTS)
    sum_x = sum_w * x0
    for j in tl.static_range(1, N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        wj = _qkx2_weight(w_ptr, j, offs, mask, m, xj, rms, WEIGHTS)
        hi = tl.where(xj > hi, xj, hi)  # C's scans: of -0 and +0 the first met stays (Q4_1's stored min)
        lo = tl.where(xj < lo, xj, lo)
        sum_w = sum_w + wj
        sum_x = sum_x + wj * xj
    lo = tl.where(lo > 0, 0.0, lo)
    flat = hi == lo
    hi = tl.where(flat, lo + 1.0, hi)
    iscale = tl.div_rn(tl.full(offs.shape, NMAX, tl.float32), hi - lo)
    scale = tl.div_rn(tl.full(offs.shape, 1.0, tl.float32), iscale)
    best_error = _qkx2_error(x_ptr, w_ptr, offs, mask, m, rms, scale, lo, iscale, lo, N, NMAX, WEIGHTS, USE_MAD)
    best_error = tl.where(flat, -float("inf"), best_error)
    offset = lo
    best_iscale = iscale
    best_offset = lo
    for step in range(N_STEPS):
        cand_iscale = tl.div_rn(tl.full(offs.shape, 0.0, tl.float32) + tl.load(numerator_ptr + step), hi - offset)
        sum_l = tl.zeros(offs.shape, tl.float32)
        sum_l2 = tl.zeros(offs.shape, tl.float32)
        sum_xl = tl.zeros(offs.shape, tl.float32)
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
            level = _clamped_level(cand_iscale * (xj - offset), 0.0, NMAX)
            wl = _qkx2_weight(w_ptr, j, offs, mask, m, xj, rms, WEIGHTS) * level
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * level
            sum_xl = sum_xl + wl * xj
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe_det = tl.where(ok, det, 1.0)
        this_scale = tl.div_rn(sum_w * sum_xl - sum_x * sum_l, safe_det)
        this_min = tl.div_rn(sum_l2 * sum_x - sum_l * sum_xl, safe_det)
        clip = this_min > 0
        this_scale = tl.where(clip, tl.div_rn(sum_xl, tl.where(clip, sum_l2, 1.0)), this_scale)
        this_min = tl.where(clip, 0.0, this_min)
        cand_error = _qkx2_error(x_ptr, w_ptr, offs, mask, m, rms, this_scale, this_min, cand_iscale, offset,
                                 N, NMAX, WEIGHTS, USE_MAD)
        better = ok & (cand_error < best_error)
        scale = tl.where(better, this_scale, scale)
        best_error = tl.where(better, cand_error, best_error)
        best_iscale = tl.where(better, cand_iscale, best_iscale)
        best_offset = tl.where(better, offset, best_offset)
        offset = tl.where(better, this_min, offset)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        level = _clamped_level(best_iscale * (xj - best_offset), 0.0, NMAX)
        tl.store(levels_ptr + j * m + offs, tl.where(flat, 0.0, level).to(tl.int32), mask=mask)
    tl.store(scale_ptr + offs, tl.where(flat, 0.0, scale), mask=mask)
    tl.store(min_ptr + offs, offset * -1.0, mask=mask)  # Triton's -x is 0 - x: +0 would stay +0


# --- levels at a scale and their weighted sums: make_qx, make_q3 and make_qp_quants ---------

@triton.jit
def _qp_level(v, NMAX: tl.constexpr, FIRST: tl.constexpr):
    """make_qp_quants' integer level of v: C's first guess keeps ``nearest_int`` as a uint8 (a
    negative one wraps), the later ones clamp it to at most NMAX."""
    level = _nearest_int(v).to(tl.int32)
    if FIRST:
        return level & 0xFF
    else:
        return tl.minimum(level, NMAX)


# how _level_sums rounds a value to its level
QX_LEVELS: tl.constexpr = tl.constexpr(0)  # make_qx/q3_quants: nearest, clamped to -NMAX..NMAX-1
QP_LEVELS: tl.constexpr = tl.constexpr(1)  # make_qp_quants: nearest, at most NMAX, kept as C's uint8


@triton.jit
def _level_sums(x_ptr, w_ptr, levels_ptr, offs, mask, m, iscale, N: tl.constexpr, NMAX: tl.constexpr,
                LEVELS: tl.constexpr, HAS_W: tl.constexpr, STORE: tl.constexpr):
    """Every value's level at ``iscale`` and the sums of w*x*l and w*l*l in C's order, w the
    weights given or x^2; with ``STORE`` the levels go to ``levels_ptr`` (QP_LEVELS as C's uint8
    holds them: the sums take them unwrapped)."""
    sum_lx = tl.zeros(offs.shape, tl.float32)
    sum_l2 = tl.zeros(offs.shape, tl.float32)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        if HAS_W:
            w = tl.load(w_ptr + j * m + offs, mask=mask, other=0.0)
        else:
            w = xj * xj
        if LEVELS == QP_LEVELS:
            wrapped = _qp_level(iscale * xj, NMAX, False)
            if STORE:
                tl.store(levels_ptr + j * m + offs, wrapped & 0xFF, mask=mask)
            level = wrapped.to(tl.float32)
        else:
            level = _clamped_level(iscale * xj, -NMAX, NMAX - 1)
            if STORE:
                tl.store(levels_ptr + j * m + offs, level, mask=mask)
        sum_lx = sum_lx + (w * xj) * level
        sum_l2 = sum_l2 + (w * level) * level
    return sum_lx, sum_l2


# --- make_qx_quants (rmse_type 1): Q6_K; with importance weights also Q3_K, Q4_0, Q5_0 ---------

@triton.jit
def qx_kernel(x_ptr, w_ptr, numerator_ptr, scale_ptr, levels_ptr, m, N_CANDIDATES: tl.constexpr,
              LANES: tl.constexpr, N: tl.constexpr, NMAX: tl.constexpr, HAS_W: tl.constexpr):
    offs, mask, peak, zero = _lanes_and_peak(x_ptr, m, LANES, N)
    chosen = tl.div_rn(tl.full(offs.shape, 0.0, tl.float32) + tl.load(numerator_ptr), peak)
    sum_lx, sum_l2 = _level_sums(x_ptr, w_ptr, x_ptr, offs, mask, m, chosen, N, NMAX, QX_LEVELS, HAS_W, False)
    scale = tl.where(sum_l2 != 0, tl.div_rn(sum_lx, tl.where(sum_l2 != 0, sum_l2, 1.0)), 0.0)
    best = scale * sum_lx
    for s in range(1, N_CANDIDATES):
        iscale = tl.div_rn(tl.full(offs.shape, 0.0, tl.float32) + tl.load(numerator_ptr + s), peak)
        sum_lx, sum_l2 = _level_sums(x_ptr, w_ptr, x_ptr, offs, mask, m, iscale, N, NMAX, QX_LEVELS, HAS_W, False)
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        new_scale = tl.div_rn(sum_lx, tl.where(better, sum_l2, 1.0))
        scale = tl.where(better, new_scale, scale)
        best = tl.where(better, new_scale * sum_lx, best)
        chosen = tl.where(better, iscale, chosen)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        level = _clamped_level(chosen * xj, -NMAX, NMAX - 1) + NMAX
        tl.store(levels_ptr + j * m + offs, tl.where(zero, 0.0, level), mask=mask)
    tl.store(scale_ptr + offs, tl.where(zero, 0.0, scale), mask=mask)


# --- make_q3_quants (do_rmse): Q3_K ------------------------------------------------------

@triton.jit
def q3_kernel(x_ptr, scale_ptr, levels_ptr, m, LANES: tl.constexpr, N: tl.constexpr, NMAX: tl.constexpr):
    """The first guess, then five in-order passes that move single values to a better level
    (C stops after a pass that changes nothing; passing again over a settled sub-block
    changes nothing, so all five are run). The levels live in ``levels_ptr`` meanwhile."""
    offs, mask, peak, zero = _lanes_and_peak(x_ptr, m, LANES, N)
    iscale = tl.div_rn(tl.full(offs.shape, -NMAX, tl.float32), peak)
    sum_lx, sum_l2 = _level_sums(x_ptr, x_ptr, levels_ptr, offs, mask, m, iscale, N, NMAX, QX_LEVELS, False, True)
    for _ in range(5):
        for i in tl.static_range(N):
            xi = tl.load(x_ptr + i * m + offs, mask=mask, other=0.0)
            li = tl.load(levels_ptr + i * m + offs, mask=mask, other=0.0)
            w = xi * xi
            wx = w * xi
            slx = sum_lx - wx * li
            sl2 = sum_l2 - (w * li) * li
            new_l = _clamped_level(tl.div_rn(xi * sl2, slx), -NMAX, NMAX - 1)  # slx <= 0: not accepted
            accept = (slx > 0) & (new_l != li)
            slx = slx + wx * new_l
            sl2 = sl2 + (w * new_l) * new_l
            accept = accept & (sl2 > 0) & ((slx * slx) * sum_l2 > (sum_lx * sum_lx) * sl2)
            tl.store(levels_ptr + i * m + offs, tl.where(accept, new_l, li), mask=mask)
            sum_lx = tl.where(accept, slx, sum_lx)
            sum_l2 = tl.where(accept, sl2, sum_l2)
    for j in tl.static_range(N):
        level = tl.load(levels_ptr + j * m + offs, mask=mask, other=0.0)
        tl.store(levels_ptr + j * m + offs, tl.where(zero, 0.0, level + NMAX), mask=mask)
    scale = tl.where(sum_l2 > 0, tl.div_rn(sum_lx, tl.where(sum_l2 > 0, sum_l2, 1.0)), 0.0)
    tl.store(scale_ptr + offs, tl.where(zero, 0.0, scale), mask=mask)


# --- make_qp_quants: the super-block scales of every K-quant importance path --------------

@triton.jit
def _qp_error(x_ptr, w_ptr, offs, mask, m, iscale, scale, N: tl.constexpr, NMAX: tl.constexpr, FIRST: tl.constexpr):
    err = tl.zeros(offs.shape, tl.float32)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        wj = tl.load(w_ptr + j * m + offs, mask=mask, other=0.0)
        diff = xj - scale * _qp_level(iscale * xj, NMAX, FIRST).to(tl.float32)
        err = err + (wj * diff) * diff
    return err


@triton.jit
def qp_kernel(x_ptr, w_ptr, numerator_ptr, scale_ptr, levels_ptr, m, N_CANDIDATES: tl.constexpr,
              LANES: tl.constexpr, N: tl.constexpr, NMAX: tl.constexpr):
    """A scale from the largest value, the best of the candidates by weighted error, then five
    in-order passes that move single levels (as ``q3_kernel``: a settled row stays settled).
    The levels, stored as C's uint8 would hold them, live in ``levels_ptr`` meanwhile."""
    offs = tl.program_id(0) * LANES + tl.arange(0, LANES)
    mask = offs < m
    top = tl.zeros(offs.shape, tl.float32)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        top = tl.where(top > xj, top, xj)  # C's MAX(max, x) from 0
    zero = top < GROUP_MAX_EPS
    top = tl.where(zero, 1.0, top)
    iscale = tl.div_rn(tl.full(offs.shape, NMAX, tl.float32), top)
    best = _qp_error(x_ptr, w_ptr, offs, mask, m, iscale, tl.div_rn(tl.full(offs.shape, 1.0, tl.float32), iscale),
                     N, NMAX, True)
    for s in range(N_CANDIDATES):
        cand = tl.div_rn(tl.full(offs.shape, 0.0, tl.float32) + tl.load(numerator_ptr + s), top)
        err = _qp_error(x_ptr, w_ptr, offs, mask, m, cand, tl.div_rn(tl.full(offs.shape, 1.0, tl.float32), cand),
                        N, NMAX, False)
        better = err < best
        best = tl.where(better, err, best)
        iscale = tl.where(better, cand, iscale)
    sum_lx, sum_l2 = _level_sums(x_ptr, w_ptr, levels_ptr, offs, mask, m, iscale, N, NMAX, QP_LEVELS, True, True)
    for _ in range(5):
        for i in tl.static_range(N):
            xi = tl.load(x_ptr + i * m + offs, mask=mask, other=0.0)
            wi = tl.load(w_ptr + i * m + offs, mask=mask, other=0.0)
            li = tl.load(levels_ptr + i * m + offs, mask=mask, other=0)
            lf = li.to(tl.float32)
            slx = sum_lx - (wi * xi) * lf
            sl2 = sum_l2 - (wi * lf) * lf
            ok = (slx > 0) & (sl2 > 0)
            new_l = _qp_level(tl.div_rn(xi * sl2, tl.where(ok, slx, 1.0)), NMAX, False)
            ok = ok & (new_l != li)
            nf = new_l.to(tl.float32)
            slx = slx + (wi * xi) * nf
            sl2 = sl2 + (wi * nf) * nf
            accept = ok & ((slx * slx) * sum_l2 > (sum_lx * sum_lx) * sl2)
            tl.store(levels_ptr + i * m + offs, tl.where(accept, new_l & 0xFF, li), mask=mask)
            sum_lx = tl.where(accept, slx, sum_lx)
            sum_l2 = tl.where(accept, sl2, sum_l2)
    for j in tl.static_range(N):
        level = tl.load(levels_ptr + j * m + offs, mask=mask, other=0)
        tl.store(levels_ptr + j * m + offs, tl.where(zero, 0, level), mask=mask)
    scale = tl.where(sum_l2 > 0, tl.div_rn(sum_lx, tl.where(sum_l2 > 0, sum_l2, 1.0)), 0.0)
    tl.store(scale_ptr + offs, tl.where(zero, 0.0, scale), mask=mask)


# --- IQ4_NL / IQ4_XS block scales ----------------------------------------------------------

@triton.jit
def _iq4_level(v, mid_ptr, step_ptr, FIRST: tl.constexpr, N_MIDPOINTS: tl.constexpr):
    """The table value nearest v, ties to the upper one: the first value plus a step per midpoint <= v."""
    q = tl.full(v.shape, FIRST, tl.float32)
    for k in tl.static_range(N_MIDPOINTS):
        q = q + tl.where(v >= tl.load(mid_ptr + k), tl.load(step_ptr + k), 0.0)
    return q


@triton.jit
def _iq4_sums(x_ptr, w_ptr, offs, mask, m, inv, mid_ptr, step_ptr, N: tl.constexpr, FIRST: tl.constexpr,
              N_MIDPOINTS: tl.constexpr, HAS_W: tl.constexpr):
    sum_qx = tl.zeros(offs.shape, tl.float32)
    sum_q2 = tl.zeros(offs.shape, tl.float32)
    for j in tl.static_range(N):
        xj = tl.load(x_ptr + j * m + offs, mask=mask, other=0.0)
        q = _iq4_level(inv * xj, mid_ptr, step_ptr, FIRST, N_MIDPOINTS)
        if HAS_W:
            wq = tl.load(w_ptr + j * m + offs, mask=mask, other=0.0) * q
        else:
            wq = (xj * xj) * q
        sum_qx = sum_qx + wq * xj
        sum_q2 = sum_q2 + wq * q
    return sum_qx, sum_q2


@triton.jit
def iq4_kernel(x_ptr, w_ptr, tries_ptr, mid_ptr, step_ptr, d_ptr, m, N_TRIES: tl.constexpr, LANES: tl.constexpr,
               N: tl.constexpr, FIRST: tl.constexpr, N_MIDPOINTS: tl.constexpr, HAS_W: tl.constexpr):
    offs, mask, peak, zero = _lanes_and_peak(x_ptr, m, LANES, N)
    inv = tl.div_rn(tl.full(offs.shape, 1.0, tl.float32), tl.div_rn(-peak, tl.full(offs.shape, FIRST, tl.float32)))
    sum_qx, sum_q2 = _iq4_sums(x_ptr, w_ptr, offs, mask, m, inv, mid_ptr, step_ptr, N, FIRST, N_MIDPOINTS, HAS_W)
    d = tl.where(sum_q2 > 0, tl.div_rn(sum_qx, tl.where(sum_q2 > 0, sum_q2, 1.0)), 0.0)
    best = d * sum_qx
    for t in range(N_TRIES):
        inv = tl.div_rn(tl.full(offs.shape, 0.0, tl.float32) + tl.load(tries_ptr + t), peak)
        sum_qx, sum_q2 = _iq4_sums(x_ptr, w_ptr, offs, mask, m, inv, mid_ptr, step_ptr, N, FIRST, N_MIDPOINTS, HAS_W)
        better = (sum_q2 > 0) & (sum_qx * sum_qx > best * sum_q2)
        d = tl.where(better, tl.div_rn(sum_qx, tl.where(better, sum_q2, 1.0)), d)
        best = tl.where(better, d * sum_qx, best)
    tl.store(d_ptr + offs, tl.where(zero, 0.0, d), mask=mask)


# --- each row's sum of squares, for the legacy types' importance (ggml's sigma2) ------------

@triton.jit
def row_square_sums_kernel(x_ptr, out_ptr, m, LANES: tl.constexpr, N: tl.constexpr):
    """sum(x*x) over each of ``m`` rows of ``N`` values (row-major, any float type), in order
    from +0 in float32, one row a lane: a row's values reach its lane's cache line by line.
    ``range(N)`` stays a loop (a model has a few row lengths: one build each)."""
    offs = tl.program_id(0) * LANES + tl.arange(0, LANES)
    mask = offs < m
    row = x_ptr + offs.to(tl.int64) * N
    acc = tl.zeros(offs.shape, tl.float32)
    for j in range(N):
        xj = tl.load(row + j, mask=mask, other=0.0).to(tl.float32)
        acc += xj * xj
    tl.store(out_ptr + offs, acc, mask=mask)
