"""What every model family tells the pipeline, and a checkpoint of one (``Model``).

A family is a class with class-level facts (its name, the GGUF architecture string
ComfyUI-GGUF's loader accepts, its block groups in the order the forward runs them, the
keys that recognize it, what it keeps F32 beyond the common rules) and two functions of a
frozen ``Config`` dataclass, whose fields hold each group's block count: the tensor shapes it
implies, and the config read back from a checkpoint's shapes. Subclasses register themselves by
name, as gguf-py's quant classes do, so a new family is one new module.

A *block* is the unit the method mixes types over: the groups' blocks numbered in forward
order (FLUX.1: ``double_blocks.0..18`` are 0..18, ``single_blocks.0..37`` are 19..56).
Only 2-D weights inside blocks are quantized, and of those not the small ones nor the
family's named exceptions; everything else stays F32, a superset of what ComfyUI-GGUF's
converter keeps (1-D tensors, tensors of at most 1024 values, its per-architecture list).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

COMFY_PREFIX = "model.diffusion_model."
# ComfyUI-GGUF's converter keeps tensors of at most this many values unquantized.
SMALL_TENSOR = 1024
Shapes = dict[str, tuple[int, ...]]


class ArchitectureError(ValueError):
    """A checkpoint that is not a model of a family this pack knows, in ComfyUI's layout."""


@dataclass(frozen=True)
class BlockGroup:
    """Blocks ``<prefix>.0``, ``<prefix>.1``, ...; ``name`` is how recipes count them, the config's
    ``depth_field`` how many there are."""

    name: str
    prefix: str
    depth_field: str


class Family:
    """A model family. Subclasses set the class facts and implement ``shapes`` and ``read_config``."""

    registry: ClassVar[dict[str, type[Family]]] = {}

    name: ClassVar[str]  # the family's id in recipes, cost tables and GGUF metadata
    title: ClassVar[str]  # for people: "FLUX.1"
    gguf_arch: ClassVar[str]  # general.architecture, as ComfyUI-GGUF's loader accepts it
    groups: ClassVar[tuple[BlockGroup, ...]]  # in forward order
    # the module that reads the last block's output in ComfyUI's model (Capture's final hidden state)
    final_layer: ClassVar[str] = "final_layer"
    recognized_by: ClassVar[tuple[str, ...]]  # all present in a checkpoint of this family
    legacy_arch: ClassVar[str | None] = None  # what tables and recipes from before families called it
    not_with: ClassVar[tuple[str, ...]] = ()  # any present: a sibling family sharing the keys above
    kept_in_blocks: ClassVar[tuple[str, ...]] = ()  # name parts of block tensors kept F32
    identity_keys: ClassVar[tuple[str, ...]]  # whose leading values identify a model's weights
    Config: ClassVar[type]  # frozen dataclass: every tensor's shape follows from it
    configs: ClassVar[Mapping[str, Any]] = {}  # named full-size configurations
    tiny: ClassVar[Any]  # a small configuration for tests and the demo
    # Tokens one sampling step runs the blocks on at the family's usual size (FLUX.1: 1024x1024).
    reference_tokens: ClassVar[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name in Family.registry:
            raise TypeError(f"two families are named {cls.name!r}")
        Family.registry[cls.name] = cls

    @classmethod
    def model(cls, config: str | Any | None = None, **changes: Any) -> Model:
        """A model of this family at a named configuration, a config, or ``tiny`` (the default),
        with ``changes`` to its fields (``Flux1.model("flux1-stock", depth_double=1)``)."""
        base = cls.configs[config] if isinstance(config, str) else config if config is not None else cls.tiny
        return Model(cls, dataclasses.replace(base, **changes))

    @classmethod
    def shapes(cls, config: Any) -> Shapes:
        """Tensor name -> shape, in checkpoint order."""
        raise NotImplementedError

    @classmethod
    def read_config(cls, keys: Mapping[str, tuple[int, ...]]) -> Any:
        """The config a checkpoint's (prefix-free) shapes imply; ArchitectureError naming what
        is missing or inconsistent."""
        raise NotImplementedError

    @classmethod
    def depths(cls, config: Any) -> tuple[int, ...]:
        """Blocks in each group."""
        return tuple(getattr(config, group.depth_field) for group in cls.groups)

    @classmethod
    def describe(cls, config: Any) -> str:
        depths = " + ".join(f"{n} {g.name}" for g, n in zip(cls.groups, cls.depths(config)))
        return f"{cls.title} ({depths} blocks)"

    # How ``block_runs`` times a block: a family with reference blocks runs them instead.
    block_timing: ClassVar[str] = "estimated: the block's weights' matmuls and one attention over all tokens"

    @classmethod
    def block_runs(cls, model: Model, weights: Callable[[int], dict[str, Any]], tokens: int, device: Any,
                   dtype: Any, gen: Any) -> dict[str, Callable[[], object]]:
        """Per block group, a call running one of its blocks forward on ``tokens`` tokens, with the
        block-relative weights ``weights(block)`` gives (for timing a sampling step).

        This default stands in for the forward with what dominates it: every quantizable weight's
        matmul over all the tokens, and one attention of the config's heads over them (norms,
        modulation and activations are left out; text streams are counted at the image's length)."""
        import torch
        import torch.nn.functional as F

        heads, head_dim = model.config.heads, model.config.head_dim
        qkv = torch.randn(1, heads, tokens, head_dim, generator=gen, device=device).to(dtype)
        runs, first = {}, 0
        for group, n in zip(cls.groups, cls.depths(model.config)):
            prefix = f"{model.block_name(first)}."
            linears = [w for name, w in weights(first).items() if model.is_quantizable(prefix + name, w.shape)]
            inputs = {cols: torch.randn(tokens, cols, generator=gen, device=device).to(dtype)
                      for cols in {w.shape[1] for w in linears}}
            runs[group.name] = lambda linears=linears, inputs=inputs: (
                [F.linear(inputs[w.shape[1]], w) for w in linears], F.scaled_dot_product_attention(qkv, qkv, qkv))
            first += n
        return runs

    @classmethod
    def reference_stack(cls, model: Model, source: Any, device: Any = "cpu", dtype: Any = None) -> Any:
        """The family's blocks in plain torch over ``source``'s weights, for costs and importance
        matrices without ComfyUI (``quant.sweep.BlockStack``)."""
        raise ArchitectureError(f"{cls.title}'s costs and importance matrices are measured in ComfyUI, with the "
                                f"Capture Layer Costs node: the pack has no headless {cls.title} blocks")

    @classmethod
    def block_name(cls, depths: Sequence[int], block: int) -> str:
        """``double_blocks.3``, ``single_blocks.0``, ``blocks.12``: block ``block`` of a model whose
        groups hold ``depths`` blocks."""
        if not 0 <= block < sum(depths):
            raise IndexError(f"block {block} is out of range 0..{sum(depths) - 1}")
        for group, n in zip(cls.groups, depths):
            if block < n:
                return f"{group.prefix}.{block}"
            block -= n
        raise AssertionError("unreachable")

    @classmethod
    def recognizes(cls, keys: Mapping[str, object]) -> bool:
        return all(k in keys for k in cls.recognized_by) and not any(k in keys for k in cls.not_with)

    @classmethod
    def config_from_fingerprint(cls, fingerprint: Mapping[str, Any]) -> Any:
        """The config a cost table's model fingerprint records (absent fields take the defaults)."""
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in fingerprint.items() if k in fields}
        return cls.Config(**values)


@dataclass(frozen=True)
class Model:
    """A checkpoint of a family: its config (read from its shapes) and its key prefix."""

    family: type[Family]
    config: Any
    prefix: str = ""  # "" or COMFY_PREFIX, as found in the source

    @property
    def depths(self) -> dict[str, int]:
        return {g.name: n for g, n in zip(self.family.groups, self.family.depths(self.config))}

    @property
    def n_blocks(self) -> int:
        return sum(self.family.depths(self.config))

    def describe(self) -> str:
        return self.family.describe(self.config)

    def block_name(self, block: int) -> str:
        return self.family.block_name(self.family.depths(self.config), block)

    def block_of(self, key: str) -> int | None:
        """The block index a tensor belongs to (key without prefix), or None outside blocks."""
        first = 0
        for group, n in zip(self.family.groups, self.family.depths(self.config)):
            if key.startswith(group.prefix + "."):
                m = _INDEX.match(key, len(group.prefix) + 1)
                if m is not None and int(m.group(1)) < n:
                    return first + int(m.group(1))
            first += n
        return None

    def is_quantizable(self, key: str, shape: Sequence[int]) -> bool:
        """True for the tensors a recipe decides: 2-D weights of more than SMALL_TENSOR values
        inside blocks, but for the family's named exceptions."""
        return (len(shape) == 2 and math.prod(shape) > SMALL_TENSOR and self.block_of(key) is not None
                and not any(part in key for part in self.family.kept_in_blocks))

    def strip_prefix(self, key: str) -> str:
        return key[len(self.prefix):] if self.prefix and key.startswith(self.prefix) else key

    def shapes(self) -> Shapes:
        """Every tensor's name (prefix-free) and shape."""
        return self.family.shapes(self.config)

    def fingerprint(self) -> dict[str, Any]:
        """The family and config: what a cost table records of the model it was measured on."""
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()}
        return {"family": self.family.name, **config}


_INDEX = re.compile(r"(\d+)\.")


def linear(shapes: Shapes, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    """Add a Linear layer's weight (and bias) to ``shapes``."""
    shapes[f"{name}.weight"] = (n_out, n_in)
    if bias:
        shapes[f"{name}.bias"] = (n_out,)


def need(keys: Mapping[str, tuple[int, ...]], key: str, title: str) -> tuple[int, ...]:
    """The shape of ``key``; ArchitectureError if the checkpoint lacks it."""
    if key not in keys:
        raise ArchitectureError(f"{title} checkpoint is incomplete: {key} is missing")
    return keys[key]


def count_blocks(keys: Mapping[str, object], prefix: str, title: str) -> int:
    """How many ``<prefix>.<i>.`` blocks the keys hold; ArchitectureError if some are missing."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if found != set(range(len(found))):
        missing = sorted(set(range(max(found) + 1)) - found)
        raise ArchitectureError(f"{title} checkpoint is missing {prefix} {missing}")
    return len(found)


def check_layout(keys: Mapping[str, tuple[int, ...]], model: Model) -> None:
    """ArchitectureError naming the first tensor the checkpoint lacks, has in another shape, or has
    beyond what ``model``'s config implies: a plan must cover exactly the tensors its file loads."""
    expected = model.shapes()
    what = model.describe()
    for key, shape in expected.items():
        if key not in keys:
            raise ArchitectureError(f"{model.family.title} checkpoint is incomplete: {key} is missing (read as {what})")
        if tuple(keys[key]) != shape:
            raise ArchitectureError(f"{key} has shape {tuple(keys[key])}, expected {shape} for {what}")
    extra = [key for key in keys if key not in expected]
    if extra:
        raise ArchitectureError(f"the checkpoint has {len(extra)} tensors {what} does not have, "
                                f"such as {extra[0]} {tuple(keys[extra[0]])}")
