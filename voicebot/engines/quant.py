"""Weight-only quantisation of a transformers model's linear layers for fast CPU decoding.

Decoding one token multiplies a single row of activations by every weight of the model, so
on a CPU its speed is set by how many bytes of weights stream through the cores: bf16
weights gave 22 tokens/s on this project's 2-core machine, int8 37, int4 49 (llama.cpp on the
same GGUF: 64). Prompts (many rows) go through the same packed kernels: keeping a dense bf16
copy for them made prompts a little faster but held every weight twice in memory.

* ``int4``: groups of 32 weights along the input dimension, each with a scale and a zero,
  which is exactly the layout of GGUF ``Q4_1``: the default chat model, converted from a
  ``Q4_1`` GGUF, gets its own weights back (up to bf16 rounding of the scales).
* ``int8``: one scale per output channel, nearly lossless for any model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["QuantizedLinear", "int4_supported", "quantize_linears"]

_LOGGER = logging.getLogger(__name__)

GROUP_SIZE = 32


def int4_supported() -> bool:
    """True when this torch has the CPU int4 kernels."""
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch, "_convert_weight_to_int4pack_for_cpu"
    )


class QuantizedLinear(nn.Module):
    """A bias-free linear layer with packed low-bit weights for one-row products."""

    bits: int
    in_features: int
    out_features: int
    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    q8: torch.Tensor
    s8: torch.Tensor

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        """Quantise ``linear``; its dense weight is not kept."""
        super().__init__()
        if linear.bias is not None:
            raise ValueError("only bias-free linear layers are quantised")
        weight = linear.weight.detach()
        self.bits = bits
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        w = weight.float()
        rows, cols = w.shape
        if bits == 4:
            groups = w.view(rows, cols // GROUP_SIZE, GROUP_SIZE)
            low = groups.amin(-1)
            scale = ((groups.amax(-1) - low) / 15).clamp(min=1e-12)
            q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
            self.packed = torch._convert_weight_to_int4pack_for_cpu(
                q.to(torch.int32).view(rows, cols), 1
            )
            # The kernel computes (q - 8) * scale + zero.
            self.scales_and_zeros = (
                torch.stack([scale.t(), (low + 8 * scale).t()], dim=-1)
                .to(torch.bfloat16)
                .contiguous()
            )
        elif bits == 8:
            scale = w.abs().amax(1).clamp(min=1e-12) / 127
            self.q8 = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)
            self.s8 = scale.to(torch.bfloat16)
        else:
            raise ValueError(f"unsupported bit width {bits}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T``."""
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.dtype != torch.bfloat16:
            rows = rows.to(torch.bfloat16)
        if self.bits == 4:
            out = torch._weight_int4pack_mm_for_cpu(
                rows, self.packed, GROUP_SIZE, self.scales_and_zeros
            )
        else:
            out = torch._weight_int8pack_mm(rows, self.q8, self.s8)
        result: torch.Tensor = out.reshape(*shape[:-1], self.out_features).to(x.dtype)
        return result


def quantize_linears(model: Any, mode: str) -> dict[str, int]:
    """Replace the model's linear layers in place; returns how many got each width.

    ``int4`` falls back to int8 for a layer whose input size is not a multiple of 32; the
    output head always gets int8 (GGUF files keep it at 8 bits too).
    """
    counts = {"int4": 0, "int8": 0, "kept": 0}
    bits = 4 if mode == "int4" else 8

    def visit(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                if child.bias is not None:
                    counts["kept"] += 1
                    continue
                width = bits if child.in_features % GROUP_SIZE == 0 else 8
                setattr(module, name, QuantizedLinear(child, width))
                counts[f"int{width}"] += 1
            else:
                visit(child)

    base = getattr(model, "model", model)
    visit(base)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and head.bias is None:
        model.lm_head = QuantizedLinear(head, 8)
        counts["int8"] += 1
    _LOGGER.info("quantised linear layers: %s", counts)
    return counts
