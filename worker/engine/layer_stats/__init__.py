"""Per-layer gradient, weight and activation statistics, computed on the device.

The training loop calls, on a telemetry step::

    with collector.activation_capture():   # forward hooks armed for this forward only
        loss = loss_fn(model(x), y)
    loss.backward()
    collector.capture_gradients(step=step, epoch=epoch)   # unscaled grads, weights before
    optimizer.step()
    collector.capture_update()             # weights after: the update; step complete

and, every few telemetry steps, ``collector.flush()``: the one place that copies the
pending steps' statistics to the host.

The rooms:

* ``collector``: ``TelemetryCollector``, the calls above. A telemetry step only runs
  the reductions, while the tensors are in cache, and keeps their per-layer totals on
  the device; the flush turns the totals of every pending step into statistics in one
  batched pass (a float64 ``(steps, L, len(STAT_NAMES))`` ``layout.StatTable`` written
  column by column, by name) and copies them to the host at once.
* ``gradients``: two paths to the same ``LayerTotals`` (per-layer Σg, Σg², Σw², non-zero
  count, max |g| bits, Inf and NaN counts), chosen by ``TelemetryCollector(...,
  gradient_path=)``. ``"per_parameter"`` (the ``"auto"`` choice on a CPU when parameters
  average >= PER_PARAM_MIN_NUMEL elements and there are no histograms) reduces each
  gradient right after the pass that brings it into cache, into preallocated slots;
  ``"matrix"`` (small parameters, histograms, GPUs; and bf16/fp16 gradients whatever the
  choice) copies every gradient into one flat ``(rows, ROW)`` float32 matrix with one
  ``_foreach_copy_`` and reduces it row-wise. Either way ``index_add_`` folds parameters
  or rows into layers in float64, and the weights before the step stay in a
  ``WeightSnapshot`` matrix that ``_foreach_sub_`` turns into the update after the step.
* ``activations``: two paths into the same ``ActivationSlots``, chosen by
  ``activation_path=``. ``"in_hook"`` (the ``"auto"`` choice on a CPU) reduces each
  tensor in its forward hook, while it is in cache: no stash, no copies (the pre-hook
  runs before the module, so an in-place activation needs no clone either). ``"stash"``
  (GPUs) stashes the tensors and reduces each group of same-shaped ones at once (fewer
  kernel launches). Both count saturation with one function, ``live_per_unit_``: per
  unit (feature or channel) the outputs not at the activation's bound, from which
  ``act_saturation = 1 - live / n`` and ``act_dead_frac`` (units with no live output in
  the whole batch) follow at the flush.
* ``layout``: the flat ``(rows, ROW)`` layout (each layer's parameters padded to whole
  rows of ROW elements, so each row belongs to one layer; the zero padding counts in no
  statistic) and the ``StatTable``. ``reductions``: the float bit tricks (max |g| and
  non-zero counts on ``x.view(int32) & 0x7fffffff``), sums and norms into slots.
  ``histograms``: gradient histograms on the device.

Conventions: ``grad_std`` is the population std (divides by n, i.e. ``correction=0``),
computed as ``sqrt(E[g²] - E[g]²)`` from float64 layer totals; ``act_std`` and
``preact_std`` are population stds too. ``inf_count`` counts ±Inf, ``nan_count`` NaN; a
layer with a NaN gradient has NaN ``grad_norm``/``grad_mean``/``grad_std``/``grad_abs_max``
and its statistics are kept. ``grad_zero_frac`` counts exact zeros (NaN is not zero). On a CPU,
NaN/Inf are counted only when some max |g| is non-finite (reading that flag costs
nothing there; NaN/Inf are rare); on a GPU they are always counted (no host sync).
``act_saturation``: the fraction of outputs at the activation's bound (ReLU exactly 0,
sigmoid within 1e-2 of 0 or 1, tanh within 1e-2 of ±1; NaN is never at a bound).
``act_dead_frac``: the fraction of units (features of an MLP layer, channels of a conv
layer) at the bound for every example and every position of the batch: a dead ReLU, or
a sigmoid/tanh unit whose every output sits at a bound (either one), so that no example
passes it more than ~1% of a gradient. Both are NaN for unbounded activations (leaky
ReLU, ELU, GELU, SiLU) and where activations are not recorded.
"""

from worker.engine.layer_stats.activations import ActivationPath, choose_activation_path
from worker.engine.layer_stats.collector import TelemetryCollector
from worker.engine.layer_stats.gradients import (
    PER_PARAM_MIN_NUMEL,
    GradientPath,
    LayerTotals,
    choose_gradient_path,
)
from worker.engine.layer_stats.layout import ROW, Layer
from worker.engine.layer_stats.reductions import (
    SATURATION_EPS,
    SaturationKind,
    live_per_unit_,
    nonzero_count,
    sum_and_norm_,
)

__all__ = [
    "PER_PARAM_MIN_NUMEL",
    "ROW",
    "SATURATION_EPS",
    "ActivationPath",
    "GradientPath",
    "Layer",
    "LayerTotals",
    "SaturationKind",
    "TelemetryCollector",
    "choose_activation_path",
    "choose_gradient_path",
    "live_per_unit_",
    "nonzero_count",
    "sum_and_norm_",
]
