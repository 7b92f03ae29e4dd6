"""The base model's linear layers on a CPU, computed by oneDNN's inner product instead of MKL's GEMM.

A decode step multiplies a few rows (one per request in the batch) by every weight matrix, and on
a CPU the matrix products are most of the step. ``torch.nn.functional.linear`` on float32 goes to
MKL's GEMM, which for a handful of rows leaves much of the machine unused; oneDNN's inner product,
the kernel PyTorch's own compiler (inductor) emits for CPU linears, took half the time for the
same product on this project's two-core machine (1, 8 and 16 rows, the benchmark model's shapes)
and a decode step of 8 rows 0.7x the time (``docs/engines.md``). That machine is an AMD EPYC, where
MKL is known not to take its best code paths; on an Intel CPU the gain may be smaller (the
results agree to rounding either way).

The weights are not copied or reordered: each ``nn.Linear`` of the served model keeps its tensors
and only its forward changes, so peft, which wraps these layers as the base of its LoRA layers,
and the batched LoRA layers (``lora_batch.py``) see the same modules. Results agree with
``F.linear`` to rounding (the sum is taken in another order), which is checked on the model's own
first layer before anything is switched; where this torch has no oneDNN, or the check fails,
nothing is switched and the model runs as loaded.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def _onednn_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Compute ``model``'s ``nn.Linear`` layers (on a CPU) with oneDNN; returns how many switched.

    Only inference uses this: the op has no backward, and the engine runs under
    ``torch.inference_mode``. The trainer loads its own copy of the model and is not touched."""
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"]
    if not linears or not agrees_with_torch(linears[0]):
        return 0
    for module in linears:
        module.forward = types.MethodType(_onednn_forward, module)  # type: ignore[method-assign]
    return len(linears)


def agrees_with_torch(module: torch.nn.Linear) -> bool:
    """Whether oneDNN computes ``module`` as ``F.linear`` does (to rounding) on a probe of 3 rows."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    weight = module.weight
    probe = torch.randn((3, weight.shape[1]), generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    try:
        with torch.inference_mode():
            ours: Any = _onednn_forward(module, probe)
            theirs = F.linear(probe, weight, module.bias)
    except RuntimeError as exc:  # this build's oneDNN does not take the dtype or shape
        logger.info("oneDNN linears not used: %s", exc)
        return False
    tolerance = 1e-3 if weight.dtype == torch.float32 else 5e-2
    scale = float(theirs.abs().max()) or 1.0
    return bool(ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= tolerance * scale)
