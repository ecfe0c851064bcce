"""F32, F16 and BF16: one value per block, stored as is or rounded to nearest even."""
from __future__ import annotations

import torch

from .base import Codec, QType, Workspace


class _FloatCodec(Codec):
    dtype: torch.dtype
    ignores_imatrix = True

    def quantize_blocks(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return x.to(self.dtype).contiguous().view(torch.uint8)

    def quantize_blocks_into(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor | None,
                             work: Workspace) -> None:
        out.view(self.dtype).copy_(x)  # cast straight into place: one pass

    def dequantize_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.contiguous().view(self.dtype).to(torch.float32)


class F32(_FloatCodec, qtype=QType.F32):
    dtype = torch.float32


class F16(_FloatCodec, qtype=QType.F16):
    dtype = torch.float16


class BF16(_FloatCodec, qtype=QType.BF16):
    # torch rounds to nearest even like ggml_fp32_to_bf16; NaN/Inf never reach here
    # (weights are checked finite before quantizing).
    dtype = torch.bfloat16


CODECS = (F32(), F16(), BF16())
