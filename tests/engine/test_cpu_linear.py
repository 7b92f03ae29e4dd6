"""oneDNN's inner product for the served model's linear layers on a CPU (``server/engine/cpu_linear.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.cpu_linear import use_onednn_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path).eval()
    return model


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def _ops(model: torch.nn.Module, input_ids: torch.Tensor) -> set[str]:
    with torch.profiler.profile() as prof, torch.inference_mode():
        model(input_ids=input_ids)
    return {event.name for event in prof.events()}


def test_every_linear_is_computed_by_onednn_and_the_logits_stay_torchs(base_model: Path) -> None:
    model = _model(base_model)
    input_ids = torch.randint(0, 200, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(input_ids=input_ids).logits
    assert "aten::linear" in _ops(model, input_ids)

    switched = use_onednn_linears(model)

    assert switched == len(_linears(model)) > 0
    ops = _ops(model, input_ids)
    assert "mkldnn::_linear_pointwise" in ops and "aten::linear" not in ops
    with torch.inference_mode():
        actual = model(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)  # the same sums, taken in another order


def test_without_onednn_the_model_runs_as_loaded(base_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = _model(base_model)
    assert use_onednn_linears(model) == 0
    assert all("forward" not in module.__dict__ for module in _linears(model))
    assert "aten::linear" in _ops(model, torch.tensor([[1, 2, 3]]))
