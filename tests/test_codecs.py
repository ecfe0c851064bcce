"""Every codec against ggml's C quantizers (bytes) and gguf-py's dequantizers (values)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quant import codecs
from quant.codecs import fused
from quant.codecs.base import BlockLayout
from tests.corpus import ROW_LENGTHS, corpus_rows, imatrix_vectors
from tests.ggml_reference import ggml_quantize, gguf_dequantize
from tests.interpreted_searches import PLAIN_KERNEL_TYPES

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(autouse=True)
def fuse_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus is small: fuse its searches too, so the compiled kernels are what is checked."""
    monkeypatch.setattr(fused, "MIN_ELEMENTS", 0)


@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("qtype", codecs.TYPE_NAMES)
def test_bytes_equal_ggml(qtype: str, n: int) -> None:
    for name, rows in corpus_rows(n).items():
        ours = codecs.quantize(torch.from_numpy(rows), qtype).numpy()
        ref = ggml_quantize(rows, qtype)
        if not np.array_equal(ours, ref):
            bad = np.argwhere((ours != ref).any(axis=1)).ravel()
            pytest.fail(f"{qtype} n={n} {name}: rows {bad.tolist()} differ from ggml")


IMATRIX_TYPES = [t for t in codecs.TYPE_NAMES if codecs.get_codec(t).supports_imatrix]


def test_every_quantized_type_takes_an_imatrix() -> None:
    """ggml weighs 11 types by an importance vector and ignores it for Q8_0, F16 and BF16."""
    assert sorted(IMATRIX_TYPES) == sorted(["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                            "IQ4_NL", "IQ4_XS"])
    rows = torch.from_numpy(corpus_rows(256, seed=9)["gaussian"])
    imatrix = torch.from_numpy(imatrix_vectors(256)["mean_square"])
    for qtype in ("Q8_0", "F16", "BF16", "F32"):
        assert torch.equal(codecs.quantize(rows, qtype, imatrix=imatrix), codecs.quantize(rows, qtype))
    with pytest.raises(ValueError, match=r"imatrix must have shape \(256,\), got \(512,\)"):
        codecs.quantize(rows, "Q4_K", imatrix=torch.ones(512))


@pytest.mark.parametrize("n", (256, 3072))
@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_imatrix_bytes_equal_ggml(qtype: str, n: int) -> None:
    for vector_name, imatrix in imatrix_vectors(n).items():
        for name, rows in corpus_rows(n, seed=8).items():
            ours = codecs.quantize(torch.from_numpy(rows), qtype, imatrix=torch.from_numpy(imatrix)).numpy()
            ref = ggml_quantize(rows, qtype, imatrix)
            if not np.array_equal(ours, ref):
                bad = np.argwhere((ours != ref).any(axis=1)).ravel()
                pytest.fail(f"{qtype} n={n} {name} with imatrix {vector_name}: rows {bad.tolist()} differ from ggml")


@pytest.mark.parametrize("qtype", codecs.TYPE_NAMES)
def test_dequantize_equals_gguf_py(qtype: str) -> None:
    for name, rows in corpus_rows(3072, seed=1).items():
        raw = ggml_quantize(rows, qtype)
        ours = codecs.dequantize(torch.from_numpy(raw), qtype, rows.shape).numpy()
        ref = gguf_dequantize(raw, qtype)
        np.testing.assert_array_equal(ours, ref, err_msg=f"{qtype} {name}")


def small_chunks(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "CHUNK_ELEMENTS", 512 * 3)
    monkeypatch.setattr(codecs.get_codec(qtype), "chunk_elements", None)
    monkeypatch.setattr(codecs.get_codec(qtype), "imatrix_chunk_elements", None)


@pytest.mark.parametrize("qtype", codecs.TYPE_NAMES)
def test_chunking_does_not_change_bytes(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXGGUF_COMPILE", "0")  # compiled steps are built per chunk shape: not this test's point
    rows = torch.from_numpy(corpus_rows(512, seed=2)["gaussian"])
    imatrix = torch.from_numpy(imatrix_vectors(512)["mean_square"])  # legacy types: a row's sigma spans chunks
    whole, weighted = codecs.quantize(rows, qtype), codecs.quantize(rows, qtype, imatrix=imatrix)
    small_chunks(qtype, monkeypatch)
    assert torch.equal(codecs.quantize(rows, qtype), whole)
    assert torch.equal(codecs.quantize(rows, qtype, imatrix=imatrix), weighted)


SEARCH_TYPES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")


@pytest.mark.parametrize("qtype", SEARCH_TYPES)
def test_plain_steps_equal_ggml(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The searches' steps run compiled on a CPU with a C++ compiler; without one (or on a
    GPU) they run op by op. Both must give ggml's bytes."""
    monkeypatch.setenv("MXGGUF_COMPILE", "0")
    for n in (256, 3072):
        for name, rows in corpus_rows(n, seed=4).items():
            ours = codecs.quantize(torch.from_numpy(rows), qtype).numpy()
            assert np.array_equal(ours, ggml_quantize(rows, qtype)), f"{qtype} n={n} {name}"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no Triton: the GPU's search kernels cannot run here")
def test_gpu_search_kernels_equal_ggml_interpreted() -> None:
    """On a GPU the K-quant and IQ4 searches run as Triton kernels; Triton's interpreter runs
    the same kernels on this CPU (numpy's float32 arithmetic: no contraction, IEEE division,
    as the kernels ask of the GPU). A fresh process: the interpreter is chosen when Triton loads."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tests" / "interpreted_searches.py"), *IMATRIX_TYPES],
                       cwd=root, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.count("rows equal ggml") == 2 * len(PLAIN_KERNEL_TYPES) + len(IMATRIX_TYPES)
    assert r.stdout.count("with an imatrix:") == len(IMATRIX_TYPES)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no Triton: the GPU's search kernels cannot run here")
def test_gpu_search_kernels_read_only_constant_globals() -> None:
    """Triton's compiler refuses a kernel that reads a plain module global (its interpreter, the
    test above, allows it): every global a kernel names is another kernel, a module or a
    ``tl.constexpr``. Seen on an H200, where a plain float made every K-quant search fail."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    from quant.codecs import triton_kernels

    kernels = {name: f for name, f in vars(triton_kernels).items() if isinstance(f, JITFunction)}
    assert kernels
    plain = [f"{name} reads {g}" for name, f in kernels.items() for g in f.fn.__code__.co_names
             if g in vars(triton_kernels) and not isinstance(getattr(triton_kernels, g), (JITFunction, tl.constexpr))
             and type(getattr(triton_kernels, g)).__name__ != "module"]
    assert not plain, plain


NEEDS_COMPILER = pytest.mark.skipif(not shutil.which("g++"), reason="no C++ compiler: the searches run op by op")


@NEEDS_COMPILER
def test_searches_compile_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a C++ compiler is, the searches' steps run as compiled kernels: each step says so
    itself (a log line would be printed once per process, and small tensors never compile)."""
    from quant.codecs import kquants_affine, kquants_symmetric

    monkeypatch.setattr(fused, "MIN_ELEMENTS", 1)  # compile for the small test rows too
    rows = torch.from_numpy(corpus_rows(512, seed=5)["gaussian"])
    for qtype in SEARCH_TYPES:
        codecs.quantize(rows, qtype)
    for step in (kquants_affine._qkx2_step, kquants_symmetric._qx_search, kquants_symmetric._q3_first_pass,
                 kquants_symmetric._q3_pass):
        assert step.runs_compiled(), f"{step.__name__} runs op by op"


QUANTIZE_Q6_K = """
import logging, sys, torch
from quant import codecs
from quant.codecs import fused, kquants_symmetric
logging.basicConfig(level=logging.WARNING)
fused.MIN_ELEMENTS = 1
q = codecs.quantize(torch.linspace(-1, 1, 64 * 256).reshape(64, 256), "Q6_K")
print(kquants_symmetric._qx_search.runs_compiled(), "torch._dynamo" in sys.modules, q.sum().item())
"""


def quantize_q6_k_in_a_process(**env: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", QUANTIZE_Q6_K], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root), **env}, check=True)


@NEEDS_COMPILER
def test_a_built_kernel_loads_without_the_compiler() -> None:
    """A kernel is built once per machine; every later process loads it without importing
    torch's compiler stack (dynamo and inductor: seconds in every process) and without tracing."""
    quantize_q6_k_in_a_process()  # builds the kernel where this machine has none yet
    compiled, dynamo, _ = quantize_q6_k_in_a_process().stdout.split()
    assert (compiled, dynamo) == ("True", "False")


@NEEDS_COMPILER
def test_a_damaged_kernel_is_built_again(tmp_path: Path) -> None:
    """A package that cannot be loaded (a crash after it was written, a full disk) is built
    once more, not reported as broken in every later process."""
    quantize_q6_k_in_a_process()  # this machine's kernels, built where missing
    for package in fused.kernel_dir().glob("*/qx_search-*.pt2"):  # Q6_K's, truncated, in a folder of its own
        damaged = tmp_path / package.relative_to(fused.kernel_dir())
        damaged.parent.mkdir(exist_ok=True)
        damaged.write_bytes(package.read_bytes()[:1000])
    r = quantize_q6_k_in_a_process(MXGGUF_KERNEL_DIR=str(tmp_path))
    assert r.stderr.count("could not be loaded; building it again") == 1
    assert r.stdout.split()[0] == "True"


def test_a_kernel_that_cannot_be_built_leaves_the_plain_steps(tmp_path: Path) -> None:
    """Where no kernel can be built (here: its folder cannot be made) the pack says so once
    and quantizes with the plain steps, to the same bytes."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = quantize_q6_k_in_a_process(MXGGUF_KERNEL_DIR=str(blocker / "kernels"))
    compiled, _, checksum = r.stdout.split()
    assert compiled == "False"
    assert r.stderr.count("could not build a kernel for _qx_search") == 1
    plain = quantize_q6_k_in_a_process(MXGGUF_COMPILE="0").stdout.split()[2]
    assert checksum == plain


def test_quantize_into_a_given_buffer() -> None:
    rows = torch.from_numpy(corpus_rows(512, seed=6)["gaussian"])
    for qtype in ("Q8_0", "Q4_K", "BF16"):
        out = torch.full((rows.shape[0], codecs.row_bytes(qtype, 512)), 7, dtype=torch.uint8)
        assert codecs.quantize(rows, qtype, out=out) is out
        assert torch.equal(out, codecs.quantize(rows, qtype))
    with pytest.raises(ValueError, match="out must be a contiguous uint8 tensor of shape"):
        codecs.quantize(rows, "Q8_0", out=torch.empty(rows.shape[0], 10, dtype=torch.uint8))


@CUDA
@pytest.mark.parametrize("qtype", codecs.TYPE_NAMES)
def test_cuda_bytes_equal_cpu(qtype: str) -> None:
    for name, rows in corpus_rows(3072, seed=3).items():
        x = torch.from_numpy(rows)
        cpu = codecs.quantize(x, qtype)
        gpu = codecs.quantize(x.cuda(), qtype).cpu()
        assert torch.equal(cpu, gpu), f"{qtype} {name}: CUDA bytes differ"
        back = codecs.dequantize(gpu.cuda(), qtype, x.shape).cpu()
        assert torch.equal(back, codecs.dequantize(cpu, qtype, x.shape)), f"{qtype} {name}"


@CUDA
@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_cuda_imatrix_bytes_equal_cpu(qtype: str) -> None:
    imatrix = torch.from_numpy(imatrix_vectors(3072)["mean_square"])
    for name, rows in corpus_rows(3072, seed=3).items():
        x = torch.from_numpy(rows)
        cpu = codecs.quantize(x, qtype, imatrix=imatrix)
        gpu = codecs.quantize(x.cuda(), qtype, imatrix=imatrix.cuda()).cpu()
        assert torch.equal(cpu, gpu), f"{qtype} {name}: CUDA bytes with an imatrix differ"


@CUDA
@pytest.mark.parametrize("qtype", codecs.TYPE_NAMES)
def test_cuda_chunks_give_the_same_bytes(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = torch.from_numpy(corpus_rows(512, seed=2)["gaussian"])
    whole = codecs.quantize(rows, qtype)
    small_chunks(qtype, monkeypatch)
    monkeypatch.setattr(codecs, "GPU_CHUNK_FACTOR", 1)
    assert torch.equal(codecs.quantize(rows.cuda(), qtype).cpu(), whole)


@CUDA
@pytest.mark.parametrize("qtype", codecs.TYPE_NAMES)
def test_cuda_odd_shapes_and_chunk_ends(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone row, sub-block counts that fill no kernel program, 3-D weights, and chunks
    ending inside rows: the GPU gives the CPU's bytes for each."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(1, 256), (3, 768), (5, 3072), (2, 3, 512), (37, 1280)]
    monkeypatch.setattr(codecs, "GPU_CHUNK_FACTOR", 1)
    monkeypatch.setattr(codecs.get_codec(qtype), "chunk_elements", 256 * 11)  # 11 blocks of 256: ends mid-row
    for shape in shapes:
        x = torch.randn(shape, generator=gen) * 0.02
        x[..., 5] = 0.0
        assert torch.equal(codecs.quantize(x.cuda(), qtype).cpu(), codecs.quantize(x, qtype)), f"{qtype} {shape}"


def test_sqrt_is_correctly_rounded_both_ways() -> None:
    """ggml's importance weights take sqrtf: numpy's IEEE root on a CPU, the float64 root
    rounded elsewhere (run here on the CPU too). torch's own float32 root is off for ~17 %."""
    from quant.codecs import base

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1 << 20, generator=gen) * torch.exp(torch.randn(1 << 20, generator=gen) * 10)
    x[:5] = torch.tensor([0.0, -0.0, float("inf"), 1e-45, 3.4e38])
    exact = torch.from_numpy(np.sqrt(x.numpy()))
    assert not torch.equal(torch.sqrt(x), exact)  # what the care is for
    assert torch.equal(base.sqrt_f32(x), exact)
    assert torch.equal(base._float64_sqrt(x), exact)


def test_a_codec_must_implement_one_quantize_method() -> None:
    """quantize_blocks and quantize_blocks_into default to each other: a codec with neither
    would recurse without end at its first use; it is refused when defined."""
    with pytest.raises(TypeError, match="implements neither"):
        type("Broken", (codecs.Codec,), {}, qtype=codecs.QType.Q8_0, layout=BlockLayout("block_q8_0", d=2, qs=32))


def test_a_codec_declares_a_layout_filling_its_block() -> None:
    """Block fields are named by width (BlockLayout); a layout missing, or not ggml's block
    size, would write bytes ggml reads as other fields: refused when defined."""
    quantize = {"quantize_blocks": lambda self, x: x}
    with pytest.raises(TypeError, match="declares its block's layout"):
        type("NoLayout", (codecs.Codec,), quantize, qtype=codecs.QType.Q8_0)
    with pytest.raises(TypeError, match="its layout block_q8_0 takes 33 bytes, a Q8_0 block 34"):
        type("Short", (codecs.Codec,), quantize, qtype=codecs.QType.Q8_0, layout=BlockLayout("block_q8_0", d=2, qs=31))


def test_unknown_type_is_named() -> None:
    with pytest.raises(ValueError, match="unknown GGUF type 'Q7_K'"):
        codecs.get_codec("Q7_K")


def test_row_length_must_fill_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        codecs.quantize(torch.zeros(2, 320), "Q4_K")


def test_bits_per_weight_from_gguf_table() -> None:
    assert codecs.bits_per_weight("Q8_0") == 8.5
    assert codecs.bits_per_weight("Q4_K") == 4.5
    assert codecs.bits_per_weight("IQ4_XS") == 4.25
    assert codecs.bits_per_weight("BF16") == 16
