"""Run by ``test_codecs``: quantize the corpus with the GPU's search kernels, run on the CPU
by Triton's interpreter (``TRITON_INTERPRET=1`` must be set before Triton loads), and
compare with ggml. Prints one line per type; exits 1 if any row differs."""
from __future__ import annotations

import sys

import numpy as np
import torch

from quant import codecs
from quant.codecs import triton_search
from tests.corpus import corpus_rows, imatrix_vectors
from tests.ggml_reference import ggml_quantize

# the types whose plain search runs in a GPU kernel; with an importance matrix every type that
# takes one does (make_qkx2_quants, make_qx_quants or the IQ4 search with weights)
PLAIN_KERNEL_TYPES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS")


def main(types: list[str]) -> int:
    if not triton_search.applies(torch.zeros(1)):
        print("the Triton searches do not apply here: is TRITON_INTERPRET=1 set?")
        return 1
    failed = False
    for qtype in types:
        if qtype in PLAIN_KERNEL_TYPES:
            for n in (256, 3072):  # every row set at once: the interpreter pays per kernel launch
                failed |= compare(qtype, n, None)
        # each 256-column quarter under one of the named vectors: one launch set for all four
        failed |= compare(qtype, 1024, np.concatenate(list(imatrix_vectors(256).values())))
    return 1 if failed else 0


def compare(qtype: str, n: int, imatrix: np.ndarray | None) -> bool:
    """Print how many corpus rows equal ggml's; True if any differs."""
    rows = np.concatenate(list(corpus_rows(n, seed=4).values()))
    given = None if imatrix is None else torch.from_numpy(imatrix)
    ours = codecs.quantize(torch.from_numpy(rows), qtype, imatrix=given).numpy()
    bad = np.argwhere((ours != ggml_quantize(rows, qtype, imatrix)).any(axis=1)).ravel().tolist()
    how = "" if imatrix is None else " with an imatrix"
    print(f"{qtype} n={n}{how}: {len(rows) - len(bad)}/{len(rows)} rows equal ggml" + (f", rows {bad} differ" if bad else ""))
    return bool(bad)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
