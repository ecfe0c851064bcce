from __future__ import annotations

import pytest
import torch

from quant.models import detect
from quant.checkpoint import state_dict_source
from quant.models.flux1_blocks import ReferenceStack
from quant.sweep import sweep
from quant.synthetic import random_state_dict
from flux_models import TINY


@pytest.fixture(scope="module")
def stack() -> ReferenceStack:
    sd = random_state_dict(TINY, seed=3)
    return ReferenceStack(detect({k: tuple(v.shape) for k, v in sd.items()}), state_dict_source(sd, "tiny"))


def whole_stack_mse(stack: ReferenceStack, inputs, block: int, qtype: str) -> float:
    """The direct approach: quantize one block, run the whole stack, compare."""
    from quant.sweep import quantized_weights

    def run() -> torch.Tensor:
        state = stack.start(inputs)
        for b in range(stack.n_blocks):
            state = stack.forward(b, state, inputs)
        return stack.output(state)

    clean = run()
    weights = stack.weights(block)
    originals = dict(weights)
    weights.update(quantized_weights(weights, qtype))
    try:
        return float(((run() - clean) ** 2).mean())
    finally:
        weights.update(originals)


def test_sweep_equals_whole_stack_reruns_and_restores_weights(stack: ReferenceStack) -> None:
    inputs = stack.make_inputs(seed=1, width=128, height=128)
    before = {b: {k: v.clone() for k, v in stack.weights(b).items()} for b in range(stack.n_blocks)}
    ids = {b: {k: id(v) for k, v in stack.weights(b).items()} for b in range(stack.n_blocks)}
    result = sweep(stack, [inputs], ["Q8_0", "Q4_K", "Q2_K"])
    for b in range(stack.n_blocks):
        assert {k: id(v) for k, v in stack.weights(b).items()} == ids[b]  # the same tensors back
        for k, v in stack.weights(b).items():
            assert torch.equal(v, before[b][k])
    for (block, qtype), sse in result.sse.items():
        mse = sse / result.count[(block, qtype)]
        assert mse == pytest.approx(whole_stack_mse(stack, inputs, block, qtype), rel=1e-4)
    n, types = stack.n_blocks, 3
    assert result.block_forwards == n + types * n * (n + 1) // 2
    costs = {q: [result.sse[(b, q)] for b in range(n)] for q in ("Q8_0", "Q4_K", "Q2_K")}
    assert all(c8 < c4 < c2 for c8, c4, c2 in zip(costs["Q8_0"], costs["Q4_K"], costs["Q2_K"]))


def test_cancel_restores_weights(stack: ReferenceStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel (or any error) while a block's weights are swapped for their quantized values
    leaves every weight as it was: raised from inside a forward, where the swap is in place."""
    inputs = stack.make_inputs(seed=2, width=64, height=64)
    before = {b: {k: v.clone() for k, v in stack.weights(b).items()} for b in range(stack.n_blocks)}
    real, calls, swapped = stack.forward, [0], []

    def forward(block: int, state, inputs):
        calls[0] += 1
        if calls[0] == stack.n_blocks + 3:  # the clean run is done: block 0 runs quantized
            swapped.append(any(not torch.equal(v, before[0][k]) for k, v in stack.weights(0).items()))
            raise KeyboardInterrupt
        return real(block, state, inputs)

    monkeypatch.setattr(stack, "forward", forward)
    with pytest.raises(KeyboardInterrupt):
        sweep(stack, [inputs], ["Q4_K", "Q3_K"])
    assert swapped == [True]
    for b in range(stack.n_blocks):
        assert all(torch.equal(v, before[b][k]) for k, v in stack.weights(b).items()), f"block {b}"


def test_samples_share_one_quantization_and_cost_the_same_as_one_by_one(
        stack: ReferenceStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two samples of one shape run as one batch, a third of another shape on its own; each
    (block, type) is quantized once for all three, and the sums equal three single sweeps."""
    import quant.sweep

    samples = [stack.make_inputs(seed=4, width=128, height=128, sigma=0.3),
               stack.make_inputs(seed=5, width=128, height=128, sigma=0.7),
               stack.make_inputs(seed=6, width=64, height=128, sigma=0.5)]
    types = ["Q8_0", "Q4_K"]
    one_by_one = [sweep(stack, [s], types) for s in samples]
    calls = []
    real = quant.sweep.quantized_weights
    monkeypatch.setattr(quant.sweep, "quantized_weights", lambda w, q, imp: calls.append(q) or real(w, q, imp))
    together = sweep(stack, samples, types)
    assert len(calls) == stack.n_blocks * len(types)
    n = stack.n_blocks
    assert together.block_forwards == 2 * (n + len(types) * n * (n + 1) // 2)  # two batches
    for key, sse in together.sse.items():
        assert together.count[key] == sum(r.count[key] for r in one_by_one)
        assert sse == pytest.approx(sum(r.sse[key] for r in one_by_one), rel=1e-5)
