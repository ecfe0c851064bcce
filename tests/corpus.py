"""Rows that stress a quantizer: the shapes of real weights and the corner cases of its
scale search (zeros, constants, one outlier, values near fp16's limits)."""
from __future__ import annotations

import numpy as np

ROW_LENGTHS = (256, 512, 3072, 12288)


def corpus_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Named float32 row sets of length ``n`` (a multiple of 256)."""
    rng = np.random.default_rng(seed + n)
    gauss = rng.standard_normal((8, n)).astype(np.float32) * 0.02
    outlier = rng.standard_normal((2, n)).astype(np.float32) * 0.01
    outlier[0, n // 3] = 3.0
    outlier[1, 7] = -5.0
    mixed_scale = rng.standard_normal((4, n)).astype(np.float32) * np.logspace(-4, 1, n, dtype=np.float32)
    return {
        "gaussian": gauss,
        "heavy_tailed": (rng.standard_t(2.0, (6, n)) * 0.02).astype(np.float32),
        "all_zero": np.zeros((2, n), np.float32),
        "constant": np.stack([np.full(n, 0.37, np.float32), np.full(n, -1.25, np.float32)]),
        "single_outlier": outlier,
        "tiny": (rng.standard_normal((3, n)) * 1e-8).astype(np.float32),
        "huge": (rng.standard_normal((3, n)) * 1e4).astype(np.float32),
        "positive": np.abs(rng.standard_normal((2, n))).astype(np.float32),
        "sparse": (rng.standard_normal((2, n)) * (rng.random((2, n)) < 0.05)).astype(np.float32),
        "mixed_scale": mixed_scale,
    }


def imatrix_vectors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Named importance vectors of length ``n`` as llama.cpp's imatrix holds them (mean squares of
    the activations entering each column), and the hard ones: zeros, a huge dynamic range."""
    rng = np.random.default_rng(seed + 7 * n)
    activations = rng.standard_normal((64, n)).astype(np.float32) * rng.gamma(2.0, 1.0, n).astype(np.float32)
    some_zero = (rng.random(n) ** 2).astype(np.float32)
    some_zero[rng.random(n) < 0.2] = 0.0
    return {
        "mean_square": (activations**2).mean(axis=0).astype(np.float32),
        "some_zero": some_zero,
        "all_zero": np.zeros(n, np.float32),
        "huge_range": np.logspace(-6, 6, n, dtype=np.float32)[rng.permutation(n)],
    }
