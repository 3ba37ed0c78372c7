"""Every statistic of TelemetryCollector against a plain per-tensor reference.

The reference concatenates each layer's parameter gradients (weight and bias) in
float64 and applies the textbook formula; the collector must agree on tiny models with
sigmoid, ReLU and batch norm, with NaN/Inf injected, and across SGD updates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import pytest
import torch
from torch import nn

from service.vocabulary import LayerKind
from worker.engine import layer_stats
from worker.engine.events import STAT_NAMES, LayerInfo, LayerStatsBatch
from worker.engine.layer_stats import ROW, SaturationKind, TelemetryCollector

COL = {name: i for i, name in enumerate(STAT_NAMES)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(params=["per_parameter", "matrix"])
def grad_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both gradient paths: per parameter (big float32 parameters on a CPU; forced here
    on tiny models) and the flat (rows, ROW) matrix."""
    threshold = 1 if request.param == "per_parameter" else 1 << 40
    monkeypatch.setattr(layer_stats, "PER_PARAM_MIN_NUMEL", threshold)
    return str(request.param)


@pytest.fixture(params=["hooks", "stash"])
def act_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both activation paths: reduced in the hooks (CPU) and stashed, then reduced per
    group of same-sized tensors (GPU)."""
    monkeypatch.setattr(layer_stats, "STASH_ACTIVATIONS_ON_CPU", request.param == "stash")
    return str(request.param)


@dataclass(frozen=True, eq=False)
class Tracked:
    info: LayerInfo
    module: nn.Module
    activation_module: nn.Module | None
    saturation: SaturationKind


def _tracked(index: int, module: nn.Module, act: nn.Module | None, sat: SaturationKind) -> Tracked:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    kind = cast("LayerKind", type(module).__name__.lower())  # linear, conv1d, conv2d
    info = LayerInfo(index, f"l{index}", kind, 0, tuple(weight.shape), None)
    return Tracked(info, module, act, sat)


def mlp(act: Callable[[], nn.Module], sat: SaturationKind) -> tuple[nn.Module, list[Tracked]]:
    """6 -> 30 -> 40 -> 3; the middle layer (1240 params) spans several rows of ROW."""
    l0, l1, l2 = nn.Linear(6, 30), nn.Linear(30, 40), nn.Linear(40, 3)
    a0, a1 = act(), act()
    assert l1.weight.numel() + l1.bias.numel() > 2 * ROW
    layers = [_tracked(0, l0, a0, sat), _tracked(1, l1, a1, sat), _tracked(2, l2, None, "none")]
    return nn.Sequential(l0, a0, l1, a1, l2), layers


def bn_mlp() -> tuple[nn.Module, list[Tracked]]:
    """linear (no bias) -> batchnorm -> relu -> linear, tracked like models.py does."""
    l0, bn, a0, l1 = nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
    layers = [
        _tracked(0, l0, a0, "relu"),
        _tracked(1, bn, None, "none"),
        _tracked(2, l1, None, "none"),
    ]
    return nn.Sequential(l0, bn, a0, l1), layers


MODELS: dict[str, Callable[[], tuple[nn.Module, list[Tracked]]]] = {
    "sigmoid": lambda: mlp(nn.Sigmoid, "sigmoid"),
    "tanh": lambda: mlp(nn.Tanh, "tanh"),
    "relu": lambda: mlp(nn.ReLU, "relu"),
    "batchnorm": bn_mlp,
}


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


def reference_grad_stats(module: nn.Module) -> dict[str, float]:
    params = list(module.parameters(recurse=False))
    g = _flat([p.grad for p in params if p.grad is not None])
    w = _flat(list(params))
    finite = g[torch.isfinite(g)]
    return {
        "grad_norm": torch.linalg.vector_norm(g).item(),
        "grad_mean": g.mean().item(),
        "grad_std": g.std(correction=0).item(),
        "grad_abs_max": g.abs().max().item() if not torch.isnan(g).any() else math.nan,
        "grad_zero_frac": (g == 0).double().mean().item(),
        "weight_norm": torch.linalg.vector_norm(w).item(),
        "nan_count": float(torch.isnan(g).sum()),
        "inf_count": float(torch.isinf(g).sum()),
        "_finite": float(finite.numel()),
    }


def reference_act_stats(pre: torch.Tensor, post: torch.Tensor, sat: str) -> dict[str, float]:
    pre, post = pre.double(), post.double()
    if sat == "sigmoid":
        saturation = ((post <= 1e-2) | (post >= 1 - 1e-2)).double().mean().item()
    elif sat == "tanh":
        saturation = (post.abs() >= 1 - 1e-2).double().mean().item()
    elif sat == "relu":
        saturation = (post == 0).double().mean().item()
    else:
        saturation = math.nan
    return {
        "act_mean": post.mean().item(),
        "act_std": post.std(correction=0).item(),
        "act_saturation": saturation,
        "preact_mean": pre.mean().item(),
        "preact_std": pre.std(correction=0).item(),
    }


def _record_activations(
    layers: list[Tracked],
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], Callable[[], None]]:
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for layer in layers:
        if layer.activation_module is not None:

            def hook(
                m: nn.Module,
                a: tuple[torch.Tensor, ...],
                o: torch.Tensor,
                i: int = layer.info.index,
            ) -> None:
                seen[i] = (a[0].detach().clone(), o.detach().clone())

            handles.append(layer.activation_module.register_forward_hook(hook))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return seen, remove


def _close(actual: float, expected: float, rel: float = 1e-5, abs_: float = 1e-7) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == pytest.approx(expected, rel=rel, abs=abs_)


def _check_row(values: np.ndarray, layers: list[Tracked], expected: list[dict[str, float]]) -> None:
    for layer, ref in zip(layers, expected, strict=True):
        for name, want in ref.items():
            if name.startswith("_"):
                continue
            got = float(values[layer.info.index, COL[name]])
            assert _close(got, want), f"layer {layer.info.index} {name}: {got} != {want}"


def _batch(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_statistic_matches_reference_over_sgd_steps(
    kind: str, grad_path: str, act_path: str
) -> None:
    torch.manual_seed(0)
    model, layers = MODELS[kind]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    collector = TelemetryCollector(layers, activations=True)
    seen, remove = _record_activations(layers)
    expected_rows = []
    for step in range(1, 4):
        x, y = _batch(step)
        opt.zero_grad()
        with collector.activation_capture():
            loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        refs = [reference_grad_stats(layer.module) for layer in layers]
        before = [_flat(list(layer.module.parameters(recurse=False))) for layer in layers]
        collector.capture_gradients(step=step, epoch=1)
        opt.step()
        collector.capture_update()
        for layer, ref, w0 in zip(layers, refs, before, strict=True):
            w1 = _flat(list(layer.module.parameters(recurse=False)))
            ref["update_ratio"] = (
                torch.linalg.vector_norm(w1 - w0) / torch.linalg.vector_norm(w0)
            ).item()
            if layer.activation_module is not None:
                pre, post = seen[layer.info.index]
                ref.update(reference_act_stats(pre, post, layer.saturation))
            else:
                ref.update(
                    dict.fromkeys(
                        ("act_mean", "act_std", "act_saturation", "preact_mean", "preact_std"),
                        math.nan,
                    )
                )
        expected_rows.append(refs)
    remove()
    assert collector.pending == 3
    batch = collector.flush()
    assert isinstance(batch, LayerStatsBatch)
    assert collector.pending == 0 and collector.flush() is None
    assert batch.steps.tolist() == [1, 2, 3] and batch.epochs.tolist() == [1, 1, 1]
    assert batch.values.shape == (3, len(layers), len(STAT_NAMES))
    assert batch.values.dtype == np.float64
    for i, refs in enumerate(expected_rows):
        _check_row(batch.values[i], layers, refs)
    collector.close()


def test_saturated_sigmoid_and_dead_relu_fractions(act_path: str) -> None:
    torch.manual_seed(0)
    for kind in ("sigmoid", "relu"):
        model, layers = MODELS[kind]()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(30.0)  # large weights push sigmoid units to 0/1 and kill ReLUs
        collector = TelemetryCollector(layers, activations=True)
        seen, remove = _record_activations(layers)
        x, y = _batch()
        with collector.activation_capture():
            loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        collector.capture_gradients(step=1, epoch=1)
        collector.capture_update()
        remove()
        batch = collector.flush()
        assert batch is not None
        for index in (0, 1):
            pre, post = seen[index]
            want = reference_act_stats(pre, post, kind)["act_saturation"]
            assert 0.1 < want < 1.0  # the test is about a visibly saturated layer
            assert batch.values[0, index, COL["act_saturation"]] == pytest.approx(want, abs=1e-6)


def test_nan_and_inf_gradients_are_counted_and_rows_kept(grad_path: str) -> None:
    torch.manual_seed(0)
    model, layers = MODELS["relu"]()
    collector = TelemetryCollector(layers, activations=False)
    x, y = _batch()
    torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
    l0, l1 = layers[0].module, layers[1].module
    assert isinstance(l0, nn.Linear) and isinstance(l1, nn.Linear)
    assert l0.weight.grad is not None and l1.bias.grad is not None
    l0.weight.grad[0, :3] = math.nan
    l0.weight.grad[1, 0] = math.inf
    l1.bias.grad[5] = -math.inf
    l1.bias.grad[6] = 0.0
    refs = [reference_grad_stats(layer.module) for layer in layers]
    collector.capture_gradients(step=7, epoch=2)
    collector.capture_update()
    batch = collector.flush()
    assert batch is not None
    row = batch.values[0]
    assert row[0, COL["nan_count"]] == 3 and row[0, COL["inf_count"]] == 1
    assert row[1, COL["nan_count"]] == 0 and row[1, COL["inf_count"]] == 1
    assert math.isnan(row[0, COL["grad_norm"]]) and math.isnan(row[0, COL["grad_abs_max"]])
    assert row[1, COL["grad_norm"]] == math.inf and row[1, COL["grad_abs_max"]] == math.inf
    assert row[1, COL["grad_zero_frac"]] == pytest.approx(refs[1]["grad_zero_frac"])
    _check_row(row, layers[2:], [{k: v for k, v in refs[2].items() if k != "update_ratio"}])
    # Activation columns are NaN where not recorded.
    assert np.isnan(row[:, COL["act_mean"] :]).all()


def test_missing_grad_counts_as_zero_and_unfinished_update_is_nan(grad_path: str) -> None:
    _, layers = MODELS["relu"]()
    collector = TelemetryCollector(layers, activations=True)
    collector.capture_gradients(step=1, epoch=1)  # no backward: every grad is None
    batch = collector.flush()  # flushed before capture_update()
    assert batch is not None
    row = batch.values[0]
    assert (row[:, COL["grad_norm"]] == 0).all() and (row[:, COL["grad_zero_frac"]] == 1).all()
    assert np.isnan(row[:, COL["update_ratio"]]).all()


@pytest.mark.parametrize("bins", [1, 7, 16])
def test_histograms_match_histc_and_count_every_entry(bins: int) -> None:
    torch.manual_seed(0)
    model, layers = MODELS["sigmoid"]()
    collector = TelemetryCollector(layers, activations=False, histogram_bins=bins)
    for step in (10, 20):
        model.zero_grad()
        x, y = _batch(step)
        torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
        collector.capture_gradients(step=step, epoch=1)
        collector.capture_update()
    model.zero_grad()
    x, y = _batch(20)
    # The last step's gradients again, for the reference.
    torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
    batch = collector.flush()
    assert batch is not None
    assert [(h.step, h.layer_index) for h in batch.histograms] == [
        (s, i) for s in (10, 20) for i in range(len(layers))
    ]
    for h in batch.histograms[len(layers) :]:
        params = layers[h.layer_index].module.parameters(recurse=False)
        g = _flat([p.grad for p in params if p.grad is not None]).float()
        assert len(h.counts) == bins and sum(h.counts) == g.numel()
        assert h.lo == pytest.approx(g.min().item()) and h.hi == pytest.approx(g.max().item())
        want = torch.histc(g, bins=bins, min=h.lo, max=h.hi).long().tolist()
        # Floating-point rounding may move an element sitting on a bin edge.
        assert sum(abs(a - b) for a, b in zip(h.counts, want, strict=True)) <= 2


def test_bf16_parameters_are_reduced_in_float32(act_path: str) -> None:
    torch.manual_seed(0)
    model, layers = MODELS["relu"]()
    model.to(torch.bfloat16)
    collector = TelemetryCollector(layers, activations=True)
    x, y = _batch()
    seen, remove = _record_activations(layers)
    with collector.activation_capture():
        loss = nn.functional.cross_entropy(model(x.bfloat16()).float(), y)
    remove()
    torch.autograd.backward(loss)
    refs = [reference_grad_stats(layer.module) for layer in layers]
    collector.capture_gradients(step=1, epoch=1)
    collector.capture_update()
    batch = collector.flush()
    assert batch is not None
    for layer, ref in zip(layers, refs, strict=True):
        got = batch.values[0, layer.info.index, COL["grad_norm"]]
        assert got == pytest.approx(ref["grad_norm"], rel=1e-5)
        assert batch.values[0, layer.info.index, COL["update_ratio"]] == 0.0
    for index, (pre, post) in seen.items():  # bf16 activations, float32 accumulation
        ref = reference_act_stats(pre, post, "relu")
        for name, want in ref.items():
            got = batch.values[0, index, COL[name]]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7), name


def test_hooks_are_gone_outside_activation_capture_and_after_close() -> None:
    _, layers = MODELS["sigmoid"]()
    collector = TelemetryCollector(layers, activations=True)
    act = layers[0].activation_module
    assert act is not None
    with collector.activation_capture():
        assert act._forward_hooks and act._forward_pre_hooks
    assert not act._forward_hooks and not act._forward_pre_hooks
    collector.close()


def test_shared_activation_module_is_rejected() -> None:
    shared = nn.ReLU()
    layers = [
        _tracked(0, nn.Linear(2, 2), shared, "relu"),
        _tracked(1, nn.Linear(2, 2), shared, "relu"),
    ]
    with pytest.raises(ValueError, match="shares its activation module"):
        TelemetryCollector(layers, activations=True)


def _one_step(
    collector: TelemetryCollector,
    model: nn.Module,
    layers: list[Tracked],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    capture: bool = True,
) -> list[dict[str, float]]:
    """One SGD step with telemetry; the reference statistics of that step."""
    seen, remove = _record_activations(layers)
    model.zero_grad()
    context = collector.activation_capture() if capture else contextlib.nullcontext()
    with context:
        loss = nn.functional.cross_entropy(model(x), y)
    remove()
    torch.autograd.backward(loss)
    refs = [reference_grad_stats(layer.module) for layer in layers]
    collector.capture_gradients(step=1, epoch=1)
    collector.capture_update()
    for layer, ref in zip(layers, refs, strict=True):
        del ref["weight_norm"]  # the weights moved; the collector saw them before the step
        if capture and layer.activation_module is not None:
            pre, post = seen[layer.info.index]
            ref.update(reference_act_stats(pre, post, layer.saturation))
    return refs


def test_inplace_activation_sees_its_input_before_it_is_overwritten(act_path: str) -> None:
    torch.manual_seed(0)
    model, layers = mlp(lambda: nn.ReLU(inplace=True), "relu")
    collector = TelemetryCollector(layers, activations=True)
    x, y = _batch()
    seen: dict[int, torch.Tensor] = {}
    handles = [
        layer.activation_module.register_forward_pre_hook(
            lambda m, a, i=layer.info.index: seen.__setitem__(i, a[0].detach().clone())
        )
        for layer in layers
        if layer.activation_module is not None
    ]
    refs = _one_step(collector, model, layers, x, y)
    for handle in handles:
        handle.remove()
    batch = collector.flush()
    assert batch is not None
    for index, pre in seen.items():
        refs[index]["preact_mean"] = pre.double().mean().item()
        refs[index]["preact_std"] = pre.double().std(correction=0).item()
        assert (pre < 0).any()  # the in-place ReLU would have zeroed these
    _check_row(batch.values[0], layers, refs)


def test_batch_size_change_and_step_without_capture(grad_path: str, act_path: str) -> None:
    torch.manual_seed(0)
    model, layers = MODELS["relu"]()
    collector = TelemetryCollector(layers, activations=True)
    rows = [
        _one_step(collector, model, layers, *_batch(1, n=32)),
        _one_step(collector, model, layers, *_batch(2, n=7)),  # a short last batch
        _one_step(collector, model, layers, *_batch(3, n=32), capture=False),
        _one_step(collector, model, layers, *_batch(4, n=7)),
    ]
    batch = collector.flush()
    assert batch is not None
    for i, refs in enumerate(rows):
        _check_row(batch.values[i], layers, refs)
    assert np.isnan(batch.values[2, :, COL["act_mean"] :]).all()


def test_per_parameter_path_matches_the_matrix_path(grad_path: str) -> None:
    """Histograms force the matrix path (as bf16/fp16 gradients do); statistics agree."""
    torch.manual_seed(0)
    model, layers = MODELS["tanh"]()
    direct = TelemetryCollector(layers, activations=False)
    copied = TelemetryCollector(layers, activations=False, histogram_bins=4)
    x, y = _batch()
    torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
    l1 = layers[1].module
    assert isinstance(l1, nn.Linear) and l1.weight.grad is not None
    l1.weight.grad[0, :4] = torch.tensor([math.nan, math.inf, -math.inf, 0.0])
    assert direct._per_param == (grad_path == "per_parameter") and not copied._per_param
    for collector in (direct, copied):
        collector.capture_gradients(step=1, epoch=1)
    a, b = direct.flush(), copied.flush()
    assert a is not None and b is not None
    # atol: the output layer's mean gradient is ~0 (softmax gradients cancel).
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert a.values[0, 1, COL["nan_count"]] == 1 and a.values[0, 1, COL["inf_count"]] == 2
