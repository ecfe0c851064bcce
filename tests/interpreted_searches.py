"""Run by ``test_codecs``: quantize the corpus with the GPU's search kernels, run on the CPU
by Triton's interpreter (``TRITON_INTERPRET=1`` must be set before Triton loads), and
compare with ggml. Prints one line per type; exits 1 if any row differs."""
from __future__ import annotations

import sys

import numpy as np
import torch

from quant import codecs
from quant.codecs import triton_search
from tests.corpus import corpus_rows
from tests.ggml_reference import ggml_quantize


def main(types: list[str]) -> int:
    if not triton_search.applies(torch.zeros(1)):
        print("the Triton searches do not apply here: is TRITON_INTERPRET=1 set?")
        return 1
    failed = False
    for qtype in types:
        for n in (256, 3072):  # every row set at once: the interpreter pays per kernel launch
            sets = corpus_rows(n, seed=4)
            rows = np.concatenate(list(sets.values()))
            ours = codecs.quantize(torch.from_numpy(rows), qtype).numpy()
            bad = np.argwhere((ours != ggml_quantize(rows, qtype)).any(axis=1)).ravel().tolist()
            failed |= bool(bad)
            print(f"{qtype} n={n}: {len(rows) - len(bad)}/{len(rows)} rows equal ggml" + (f", rows {bad} differ" if bad else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
