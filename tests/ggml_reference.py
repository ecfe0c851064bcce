"""ggml's own C quantizers (ggml-python) and gguf-py's dequantizers: the reference
our codecs must match byte for byte."""
from __future__ import annotations

import ctypes

import gguf
import numpy as np
import pytest

ggml = pytest.importorskip("ggml", reason="ggml-python (test extra) is needed for the byte-exact reference")


def ggml_quantize(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Bytes ``ggml_quantize_chunk`` writes for float32 rows ``x``: uint8 ``(rows, row_bytes)``."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    if qtype == "F32":
        return x.view(np.uint8).copy()
    nrows, n = x.shape
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    out = np.zeros((nrows, n // block * type_size), dtype=np.uint8)
    imp = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        imp = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    t = getattr(ggml, f"GGML_TYPE_{qtype}")
    ggml.ggml_quantize_init(t)
    written = ggml.ggml_quantize_chunk(
        t, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data_as(ctypes.c_void_p),
        0, nrows, n, imp,
    )
    assert written == out.size
    return out


def gguf_dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
