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
from worker.engine.events import ACT_STATS, STAT_NAMES, LayerInfo, LayerStatsBatch
from worker.engine.layer_stats import (
    PER_PARAM_MIN_NUMEL,
    ROW,
    ActivationPath,
    GradientPath,
    SaturationKind,
    TelemetryCollector,
    choose_activation_path,
    choose_gradient_path,
)

COL = {name: i for i, name in enumerate(STAT_NAMES)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(params=["per_parameter", "matrix"])
def grad_path(request: pytest.FixtureRequest) -> GradientPath:
    """Both gradient paths: per parameter ("auto" on a CPU for big float32 parameters;
    forced here on tiny models) and the flat (rows, ROW) matrix."""
    path: GradientPath = request.param
    return path


@pytest.fixture(params=["in_hook", "stash"])
def act_path(request: pytest.FixtureRequest) -> ActivationPath:
    """Both activation paths: reduced in the hooks ("auto" on a CPU) and stashed, then
    reduced per group of same-shaped tensors ("auto" on a GPU; forced here on a CPU)."""
    path: ActivationPath = request.param
    return path


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


def reference_at_bound(post: torch.Tensor, sat: str) -> torch.Tensor | None:
    """Which outputs sit at the activation's bound (None: the activation has none)."""
    if sat == "sigmoid":
        return (post <= 1e-2) | (post >= 1 - 1e-2)
    if sat == "tanh":
        return post.abs() >= 1 - 1e-2
    if sat == "relu":
        return post == 0
    return None


def reference_dead_frac(post: torch.Tensor, sat: str) -> float:
    """Fraction of units (dimension 1: features or channels) at the bound for every
    example and position, one unit at a time."""
    at_bound = reference_at_bound(post, sat)
    if at_bound is None:
        return math.nan
    units = post.shape[1]
    dead = [bool(at_bound[:, unit].all()) for unit in range(units)]
    return sum(dead) / units


def reference_act_stats(pre: torch.Tensor, post: torch.Tensor, sat: str) -> dict[str, float]:
    pre, post = pre.double(), post.double()
    at_bound = reference_at_bound(post, sat)
    return {
        "act_mean": post.mean().item(),
        "act_std": post.std(correction=0).item(),
        "act_saturation": math.nan if at_bound is None else at_bound.double().mean().item(),
        "preact_mean": pre.mean().item(),
        "preact_std": pre.std(correction=0).item(),
        "act_dead_frac": reference_dead_frac(post, sat),
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
    kind: str, grad_path: GradientPath, act_path: ActivationPath
) -> None:
    torch.manual_seed(0)
    model, layers = MODELS[kind]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    collector = TelemetryCollector(
        layers, activations=True, gradient_path=grad_path, activation_path=act_path
    )
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
                ref.update(dict.fromkeys(ACT_STATS, math.nan))
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


def test_saturated_sigmoid_and_dead_relu_fractions(act_path: ActivationPath) -> None:
    torch.manual_seed(0)
    for kind in ("sigmoid", "relu"):
        model, layers = MODELS[kind]()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(30.0)  # large weights push sigmoid units to 0/1 and kill ReLUs
        collector = TelemetryCollector(layers, activations=True, activation_path=act_path)
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


def test_nan_and_inf_gradients_are_counted_and_rows_kept(grad_path: GradientPath) -> None:
    torch.manual_seed(0)
    model, layers = MODELS["relu"]()
    collector = TelemetryCollector(layers, activations=False, gradient_path=grad_path)
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


def test_missing_grad_counts_as_zero_and_unfinished_update_is_nan(grad_path: GradientPath) -> None:
    _, layers = MODELS["relu"]()
    collector = TelemetryCollector(layers, activations=True, gradient_path=grad_path)
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


def test_bf16_parameters_are_reduced_in_float32(
    grad_path: GradientPath, act_path: ActivationPath
) -> None:
    """bf16 gradients take the matrix path even where the per-parameter one is chosen."""
    torch.manual_seed(0)
    model, layers = MODELS["relu"]()
    model.to(torch.bfloat16)
    collector = TelemetryCollector(
        layers, activations=True, gradient_path=grad_path, activation_path=act_path
    )
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


def test_inplace_activation_sees_its_input_before_it_is_overwritten(
    act_path: ActivationPath,
) -> None:
    torch.manual_seed(0)
    model, layers = mlp(lambda: nn.ReLU(inplace=True), "relu")
    collector = TelemetryCollector(layers, activations=True, activation_path=act_path)
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


def test_batch_size_change_and_step_without_capture(
    grad_path: GradientPath, act_path: ActivationPath
) -> None:
    torch.manual_seed(0)
    model, layers = MODELS["relu"]()
    collector = TelemetryCollector(
        layers, activations=True, gradient_path=grad_path, activation_path=act_path
    )
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


def test_per_parameter_path_matches_the_matrix_path(grad_path: GradientPath) -> None:
    """Histograms force the matrix path (as bf16/fp16 gradients do); statistics agree."""
    torch.manual_seed(0)
    model, layers = MODELS["tanh"]()
    direct = TelemetryCollector(layers, activations=False, gradient_path=grad_path)
    copied = TelemetryCollector(layers, activations=False, histogram_bins=4)
    x, y = _batch()
    torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
    l1 = layers[1].module
    assert isinstance(l1, nn.Linear) and l1.weight.grad is not None
    l1.weight.grad[0, :4] = torch.tensor([math.nan, math.inf, -math.inf, 0.0])
    assert direct.gradient_path == grad_path and copied.gradient_path == "matrix"
    for collector in (direct, copied):
        collector.capture_gradients(step=1, epoch=1)
    a, b = direct.flush(), copied.flush()
    assert a is not None and b is not None
    # atol: the output layer's mean gradient is ~0 (softmax gradients cancel).
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert a.values[0, 1, COL["nan_count"]] == 1 and a.values[0, 1, COL["inf_count"]] == 2


# --- dead units: at the bound for every example (and position), not merely sparse ---------


def _forward_row(
    model: nn.Module, layers: list[Tracked], x: torch.Tensor, act_path: ActivationPath
) -> tuple[np.ndarray, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """One recorded forward (no backward): the collector's row and the activations seen."""
    collector = TelemetryCollector(layers, activations=True, activation_path=act_path)
    seen, remove = _record_activations(layers)
    with torch.no_grad(), collector.activation_capture():
        model(x)
    remove()
    collector.capture_gradients(step=1, epoch=1)
    batch = collector.flush()
    assert batch is not None
    return batch.values[0], seen


@pytest.mark.parametrize("dead_units", [0, 2])
def test_relu_units_are_dead_only_when_zero_for_every_example(
    dead_units: int, act_path: ActivationPath
) -> None:
    """relu(x_j) is zero on about half the examples: sparse, not dead; a unit with zero
    weights and a negative bias is zero on all of them: dead."""
    linear, relu, output = nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(6))
        linear.bias.zero_()
        for unit in range(6 - dead_units, 6):
            linear.weight[unit].zero_()
            linear.bias[unit] = -1.0
    layers = [_tracked(0, linear, relu, "relu"), _tracked(1, output, None, "none")]
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    row, seen = _forward_row(nn.Sequential(linear, relu, output), layers, x, act_path)
    post = seen[0][1]
    live_units = post[:, : 6 - dead_units]
    assert (live_units == 0).any(dim=0).all() and (live_units != 0).any(dim=0).all()
    assert 0.4 < (live_units == 0).double().mean() < 0.6  # sparse: about half zeros
    assert row[0, COL["act_dead_frac"]] == dead_units / 6 == reference_dead_frac(post, "relu")
    want = reference_act_stats(seen[0][0], post, "relu")["act_saturation"]
    assert row[0, COL["act_saturation"]] == pytest.approx(want)
    assert math.isnan(row[1, COL["act_dead_frac"]])  # the output layer has no activation


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_channel_is_dead_only_when_zero_at_every_position(
    dims: int, act_path: ActivationPath
) -> None:
    """Channel 0 is zero on the first half of the positions of every example and alive
    on the rest; channel 1 the reverse; channel 2 is zero everywhere: 1 dead of 3."""
    conv: nn.Conv1d | nn.Conv2d = nn.Conv1d(1, 3, 1) if dims == 1 else nn.Conv2d(1, 3, 1)
    relu, output = nn.ReLU(), nn.Linear(3 * 36, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(3, 1, *[1] * dims))
        assert conv.bias is not None
        conv.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    layers = [_tracked(0, conv, relu, "relu"), _tracked(1, output, None, "none")]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 36, generator=g) + 0.1
    x[:, :, :18] *= -1  # negative first half, positive second half
    x = x if dims == 1 else x.view(16, 1, 6, 6)
    model = nn.Sequential(conv, relu, nn.Flatten(), output)
    row, seen = _forward_row(model, layers, x, act_path)
    post = seen[0][1]
    assert post.dim() == 2 + dims and post.shape[1] == 3
    assert row[0, COL["act_dead_frac"]] == 1 / 3 == reference_dead_frac(post, "relu")
    assert row[0, COL["act_saturation"]] == pytest.approx(2 / 3)  # (18 + 18 + 36) / 108


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_sigmoid_and_tanh_units_are_dead_when_every_output_sits_at_a_bound(
    kind: SaturationKind, act_path: ActivationPath
) -> None:
    """Unit 0 pinned at the upper bound, unit 1 at the lower, unit 2 at one bound or the
    other depending on the example (no example passes it a gradient either: dead by the
    documented definition), unit 3 in the middle range: 3 dead of 4."""
    linear, output = nn.Linear(4, 4), nn.Linear(4, 2)
    act: nn.Module = nn.Sigmoid() if kind == "sigmoid" else nn.Tanh()
    with torch.no_grad():
        linear.weight.copy_(torch.diag(torch.tensor([0.0, 0.0, 50.0, 0.5])))
        linear.bias.copy_(torch.tensor([20.0, -20.0, 0.0, 0.0]))
    layers = [_tracked(0, linear, act, kind), _tracked(1, output, None, "none")]
    g = torch.Generator().manual_seed(0)
    magnitude = torch.rand(64, 4, generator=g) + 0.5  # |x| >= 0.5: unit 2 always at a bound
    sign = torch.randint(0, 2, (64, 4), generator=g) * 2 - 1
    row, seen = _forward_row(nn.Sequential(linear, act, output), layers, magnitude * sign, act_path)
    pre, post = seen[0]
    assert row[0, COL["act_dead_frac"]] == 3 / 4 == reference_dead_frac(post, kind)
    want = reference_act_stats(pre, post, kind)["act_saturation"]
    assert row[0, COL["act_saturation"]] == pytest.approx(want)
    assert 0.7 < want < 0.8  # unit 3 never saturates


def test_unbounded_activation_has_no_dead_fraction(act_path: ActivationPath) -> None:
    linear, leaky, output = nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 2)
    layers = [_tracked(0, linear, leaky, "none"), _tracked(1, output, None, "none")]
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    row, _ = _forward_row(nn.Sequential(linear, leaky, output), layers, x, act_path)
    assert math.isfinite(row[0, COL["act_mean"]])
    assert math.isnan(row[0, COL["act_saturation"]]) and math.isnan(row[0, COL["act_dead_frac"]])


# --- which path "auto" picks ------------------------------------------------------------------


def test_auto_paths_pick_by_device_parameter_size_and_histograms() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # no CUDA call: a device name
    big, small = [PER_PARAM_MIN_NUMEL] * 3, [PER_PARAM_MIN_NUMEL * 3 - 1, 0, 0]

    def grad(device: torch.device, sizes: list[int], bins: int = 0) -> str:
        return choose_gradient_path("auto", device=device, sizes=sizes, histogram_bins=bins)

    assert grad(cpu, big) == "per_parameter"
    assert grad(cpu, small) == "matrix"  # the average decides, not the largest
    assert grad(cpu, big, bins=8) == "matrix"  # histograms read the matrix
    assert grad(gpu, big) == "matrix"
    assert choose_activation_path("auto", device=cpu) == "in_hook"
    assert choose_activation_path("auto", device=gpu) == "stash"
    for path in ("per_parameter", "matrix"):
        assert choose_gradient_path(path, device=gpu, sizes=small, histogram_bins=0) == path
    with pytest.raises(ValueError, match="histograms need the matrix"):
        choose_gradient_path("per_parameter", device=cpu, sizes=big, histogram_bins=8)


def test_collector_defaults_to_the_auto_paths() -> None:
    wide = nn.Linear(128, 128)  # 16512 parameters: above the per-parameter threshold
    big = TelemetryCollector([_tracked(0, wide, None, "none")], activations=True)
    assert big.gradient_path == "per_parameter" and big.activation_path == "in_hook"
    _, layers = MODELS["relu"]()
    assert TelemetryCollector(layers, activations=True).gradient_path == "matrix"
