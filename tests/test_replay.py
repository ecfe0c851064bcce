"""The replay sweep (``quant.replay``) on a small model whose blocks add into their inputs in
place, as ComfyUI's do: its costs equal running the whole forward with one block quantized, at
N + T*N(N+1)/2 block forwards per sample, whatever the grouping of samples."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from quant.costs import FINAL_HIDDEN_STATE, MODEL_OUTPUT
from quant.replay import BlockReplay, ModuleWeights, replay_sweep
from quant.sweep import add_error, quantized_weights

WIDTH, N_BLOCKS = 256, 4
TYPES = ["Q4_K", "Q2_K"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.gate = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x += self.lin(torch.tanh(x)) * scale  # in place, as ComfyUI's blocks do
        return x


class Toy(nn.Module):
    """Embedding, two parallel-free groups of blocks, a final layer that reads part of the state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(WIDTH, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(N_BLOCKS))
        self.final_layer = nn.Linear(WIDTH, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, scale=t)
        return self.final_layer(h[:, 1:]) * 2


@pytest.fixture
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


def samples(n: int) -> list:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 5, WIDTH, generator=gen), torch.tensor(0.5 + i)) for i in range(n)]


def replay_of(model: Toy) -> BlockReplay:
    return BlockReplay(model, [f"blocks.{b}" for b in range(N_BLOCKS)], "final_layer")


def direct_costs(model: Toy, inputs: list) -> dict[str, dict]:
    """The plain way: the whole forward with one block quantized, no replay."""
    hidden: list[torch.Tensor] = []
    model.final_layer.register_forward_pre_hook(lambda _m, args: hidden.append(args[0].float().clone()))
    with torch.no_grad():
        def run(x, t):
            hidden.clear()
            out = model(x.clone(), t)
            return {FINAL_HIDDEN_STATE: hidden[0], MODEL_OUTPUT: out.float()}

        clean = [run(*s) for s in inputs]
        costs = {m: {} for m in clean[0]}
        for b in range(N_BLOCKS):
            weights = ModuleWeights(model.blocks[b])
            originals = dict(weights)
            for qtype in TYPES:
                weights.update(quantized_weights(weights, qtype))
                for m in costs:
                    sse, count = 0.0, 0
                    for s, c in zip(inputs, clean):
                        sse, count = add_error(sse, count, run(*s)[m], c[m])
                    costs[m][(b, qtype)] = sse
                weights.update(originals)
    return costs


def runs_of(model: Toy, inputs: list) -> list:
    return [lambda x=x, t=t: model(x.clone(), t) for x, t in inputs]


def test_replay_costs_equal_the_whole_forward_with_one_block_quantized(toy: Toy) -> None:
    inputs = samples(2)
    want = direct_costs(toy, inputs)
    replay = replay_of(toy)
    got = replay_sweep(replay, runs_of(toy, inputs), TYPES, lambda b: ModuleWeights(toy.blocks[b]))
    for measure in (FINAL_HIDDEN_STATE, MODEL_OUTPUT):
        assert got[measure].sse == want[measure], measure
        assert all(v > 0 for v in got[measure].sse.values())
    per_sample = N_BLOCKS + len(TYPES) * N_BLOCKS * (N_BLOCKS + 1) // 2
    assert got[FINAL_HIDDEN_STATE].block_forwards == len(inputs) * per_sample
    assert all("forward" not in block.__dict__ for block in toy.blocks)  # the class's forward is back


def test_unquantized_rerun_gives_the_clean_values_exactly(toy: Toy) -> None:
    replay = replay_of(toy)
    (run,) = runs_of(toy, samples(1))
    rec = replay.record(run)
    for b in range(N_BLOCKS):
        again = replay.rerun(run, rec, b)
        assert all(torch.equal(again[m], rec.final[m]) for m in rec.final)


def test_samples_in_groups_cost_the_same_as_all_at_once(toy: Toy) -> None:
    inputs = samples(3)
    weights_of = lambda b: ModuleWeights(toy.blocks[b])  # noqa: E731
    together = replay_sweep(replay_of(toy), runs_of(toy, inputs), TYPES, weights_of)
    one_rec = replay_of(toy).record(runs_of(toy, inputs)[0]).nbytes
    told = []
    grouped = replay_sweep(replay_of(toy), runs_of(toy, inputs), TYPES, weights_of, memory_budget=2 * one_rec,
                           progress=lambda done, total: told.append((done, total)))
    for m in together:
        assert grouped[m].sse == pytest.approx(together[m].sse, rel=1e-12) and grouped[m].count == together[m].count
    assert told[-1] == (2 * N_BLOCKS * len(TYPES),) * 2 and len(told) == 2 * N_BLOCKS * len(TYPES)


def test_a_block_that_does_not_run_or_runs_twice_is_refused(toy: Toy) -> None:
    replay = BlockReplay(toy, ["blocks.0", "blocks.1"], "final_layer")
    with pytest.raises(RuntimeError, match="ran twice"):
        replay.record(lambda: [toy.blocks[0](torch.zeros(1, 2, WIDTH), 1.0) for _ in range(2)])
    assert "forward" not in toy.blocks[0].__dict__
    with pytest.raises(RuntimeError, match=r"blocks blocks\.1 did not run"):
        replay.record(lambda: toy.final_layer(toy.blocks[0](torch.zeros(1, 2, WIDTH), 1.0)))

