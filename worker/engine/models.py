"""Models built from a ModelSpec: an MLP or a 1-D/2-D CNN, plain or residual.

Every hidden layer is ``layer -> norm -> activation -> dropout``; the output layer sits
on top. With ``skip`` the same hidden layers are grouped into ResNet-style blocks of two,
``act(proj(x) + norm(layer(act(norm(layer(x))))))``, so a plain net and its residual twin
of equal depth have the same weight layers (plus a projection where shapes change).

Choices worth knowing:

* ``norm: layer`` on a CNN is ``GroupNorm(1, C)``: per sample, over channels and
  positions, with a per-channel affine (the usual "LayerNorm for conv nets").
* Layers followed by batch norm have no bias: batch norm cancels it, and a parameter
  whose gradient is identically zero would only pollute the layer statistics.
* With a norm, the last norm of each residual branch starts with weight (gamma) zero, so
  every block is the identity map up to its activation at init (Goyal et al., 2017).
  Without a norm the branch keeps the requested init, so the plain-vs-residual comparison
  compares architectures, not inits.
* Dropout and DropConnect apply to hidden layers only, never to the output layer or a
  projection.
* Projections (linear or 1x1 conv) have no bias: the branch already carries one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from service.specs import Activation, ModelSpec
from service.vocabulary import LayerKind, SaturationKind
from worker.engine.dropconnect import DropConnectConv1d, DropConnectConv2d, DropConnectLinear
from worker.engine.events import LayerInfo

Arch = Literal["linear", "conv1d", "conv2d"]

_LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default, also used by kaiming/xavier gains


@dataclass(frozen=True, eq=False)
class TrackedLayer:
    info: LayerInfo
    module: nn.Module
    # A forward hook on it sees input = pre-activation, output = post-activation.
    activation_module: nn.Module | None
    saturation: SaturationKind


@dataclass
class BuiltModel:
    module: nn.Module
    layers: list[TrackedLayer]


@dataclass(frozen=True)
class _Pending:
    """A tracked layer before the model exists (its module path is not known yet)."""

    module: nn.Module
    kind: LayerKind
    # Set together: the activation module applied to this layer's output, and its name.
    activation_module: nn.Module | None = None
    activation: Activation | None = None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def make_activation(name: Activation) -> nn.Module:
    # Never in-place: activation hooks need the pre-activation input intact.
    factories: dict[str, type[nn.Module]] = {
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }
    if name == "leaky_relu":
        return nn.LeakyReLU(_LEAKY_SLOPE)
    return factories[name]()


def saturation_of(name: Activation | None) -> SaturationKind:
    # Only plain ReLU has exact zeros worth counting as "dead"; leaky/elu/gelu/silu do not.
    if name in ("sigmoid", "tanh", "relu"):
        return name
    return "none"


class Net(nn.Module):
    """stem -> hidden layers or residual blocks -> pool -> output."""

    def __init__(
        self, stem: nn.Module, hidden: list[nn.Module], pool: nn.Module, output: nn.Module
    ) -> None:
        super().__init__()
        self.stem = stem
        self.hidden = nn.ModuleList(hidden)
        self.pool = pool
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.hidden:
            x = layer(x)
        return self.output(self.pool(x))  # type: ignore[no-any-return]


class ResidualBlock(nn.Module):
    """``drop(act(proj(x) + branch(x)))``; ``proj`` is the identity when shapes match."""

    def __init__(
        self, proj: nn.Module, branch: nn.Sequential, act: nn.Module, drop: nn.Module
    ) -> None:
        super().__init__()
        # Registered first so module order matches the forward order (proj runs first).
        self.proj = proj
        self.branch = branch
        self.act = act
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj(x)
        return self.drop(self.act(shortcut + self.branch(x)))  # type: ignore[no-any-return]


class GlobalAvgPool(nn.Module):
    """Mean over every position, (N, C, *spatial) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=2)


@dataclass(frozen=True)
class _Factory:
    """Makes the weight, norm and projection layers of one architecture."""

    spec: ModelSpec
    arch: Arch

    def weight_layer(self, n_in: int, n_out: int) -> nn.Module:
        s = self.spec
        bias = s.norm != "batch"
        p = s.dropconnect
        if self.arch == "linear":
            if p > 0:
                return DropConnectLinear(n_in, n_out, p=p, bias=bias)
            return nn.Linear(n_in, n_out, bias=bias)
        conv_kw = {"kernel_size": s.kernel_size, "padding": s.kernel_size // 2, "bias": bias}
        if self.arch == "conv1d":
            if p > 0:
                return DropConnectConv1d(n_in, n_out, p=p, **conv_kw)
            return nn.Conv1d(n_in, n_out, **conv_kw)  # type: ignore[arg-type]
        if p > 0:
            return DropConnectConv2d(n_in, n_out, p=p, **conv_kw)
        return nn.Conv2d(n_in, n_out, **conv_kw)  # type: ignore[arg-type]

    def norm_layer(self, channels: int) -> tuple[nn.Module, LayerKind] | None:
        norm = self.spec.norm
        if norm == "none":
            return None
        if norm == "batch":
            if self.arch == "conv2d":
                return nn.BatchNorm2d(channels), "batchnorm"
            return nn.BatchNorm1d(channels), "batchnorm"
        if self.arch == "linear":
            return nn.LayerNorm(channels), "layernorm"
        return nn.GroupNorm(1, channels), "groupnorm"

    def projection(self, n_in: int, n_out: int) -> nn.Module:
        if self.arch == "linear":
            return nn.Linear(n_in, n_out, bias=False)
        if self.arch == "conv1d":
            return nn.Conv1d(n_in, n_out, kernel_size=1, bias=False)
        return nn.Conv2d(n_in, n_out, kernel_size=1, bias=False)

    def dropout(self) -> nn.Module:
        return nn.Dropout(self.spec.dropout) if self.spec.dropout > 0 else nn.Identity()


def _plain_layer(f: _Factory, n_in: int, tracked: list[_Pending]) -> nn.Sequential:
    """``layer -> norm -> act -> dropout``, appending its tracked layers in forward order."""
    act_name = f.spec.activation
    layer = f.weight_layer(n_in, f.spec.width)
    act = make_activation(act_name)
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    parts[_layer_attr(f.arch)] = layer
    tracked.append(_Pending(layer, f.arch, act, act_name))
    norm = f.norm_layer(f.spec.width)
    if norm is not None:
        parts["norm"] = norm[0]
        tracked.append(_Pending(norm[0], norm[1]))
    parts["act"] = act
    if f.spec.dropout > 0:
        parts["drop"] = f.dropout()
    return nn.Sequential(parts)


def _residual_block(f: _Factory, n_in: int, tracked: list[_Pending]) -> ResidualBlock:
    width, act_name = f.spec.width, f.spec.activation
    proj: nn.Module = nn.Identity()
    if n_in != width:
        proj = f.projection(n_in, width)
        tracked.append(_Pending(proj, "projection"))
    act_inner, act_out = make_activation(act_name), make_activation(act_name)
    attr = _layer_attr(f.arch)
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (m, act) in enumerate(((n_in, act_inner), (width, act_out)), start=1):
        layer = f.weight_layer(m, width)
        parts[f"{attr}{i}"] = layer
        # The second layer's activation comes after the add: its hook sees x + f(x).
        tracked.append(_Pending(layer, f.arch, act, act_name))
        norm = f.norm_layer(width)
        if norm is not None:
            parts[f"norm{i}"] = norm[0]
            tracked.append(_Pending(norm[0], norm[1]))
        if i == 1:
            parts["act1"] = act_inner
            if f.spec.dropout > 0:
                parts["drop1"] = f.dropout()
    return ResidualBlock(proj, nn.Sequential(parts), act_out, f.dropout())


def _layer_attr(arch: Arch) -> str:
    return "linear" if arch == "linear" else "conv"


def _zero_last_branch_norm(block: ResidualBlock) -> None:
    # Goyal et al.: gamma = 0 makes the branch output exactly zero at init, so the block
    # starts as act(proj(x)) and a deep residual net starts shallow.
    last = block.branch[-1]
    if isinstance(last, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm):
        nn.init.zeros_(last.weight)


def _init_gain(activation: Activation | None) -> tuple[str, float]:
    """(nonlinearity, gain) for torch.nn.init; ELU/GELU/SiLU are treated as ReLU."""
    if activation is None:
        return "linear", 1.0
    if activation == "leaky_relu":
        return "leaky_relu", nn.init.calculate_gain("leaky_relu", _LEAKY_SLOPE)
    if activation in ("sigmoid", "tanh"):
        return activation, nn.init.calculate_gain(activation)
    return "relu", nn.init.calculate_gain("relu")


def _init_weight_layer(module: nn.Module, spec: ModelSpec, activation: Activation | None) -> None:
    weight, bias = module.weight, module.bias
    assert isinstance(weight, torch.Tensor)
    nonlinearity, gain = _init_gain(activation)
    with torch.no_grad():
        if spec.init == "xavier":
            nn.init.xavier_uniform_(weight, gain=gain)
        elif spec.init == "kaiming":
            # kaiming_normal_ multiplies by calculate_gain(nonlinearity, a); the std is
            # gain / sqrt(fan_in), i.e. sqrt(2 / fan_in) for ReLU.
            a = _LEAKY_SLOPE if nonlinearity == "leaky_relu" else 0.0
            nn.init.kaiming_normal_(weight, a=a, mode="fan_in", nonlinearity=nonlinearity)  # type: ignore[arg-type]
        else:
            nn.init.normal_(weight, 0.0, spec.init_std)
        if isinstance(bias, torch.Tensor):
            nn.init.zeros_(bias)


def _apply_init(spec: ModelSpec, tracked: list[_Pending]) -> None:
    if spec.init == "default":
        return
    for p in tracked:
        if p.kind in ("linear", "conv1d", "conv2d", "projection", "output"):
            _init_weight_layer(p.module, spec, p.activation)


def _arch_for(spec: ModelSpec, input_shape: tuple[int, ...]) -> Arch:
    if spec.arch == "mlp":
        return "linear"
    if len(input_shape) == 2:
        return "conv1d"
    if len(input_shape) == 3:
        return "conv2d"
    raise ValueError(f"cnn needs signals (1, L) or images (1, H, W); got input shape {input_shape}")


def build_model(spec: ModelSpec, *, input_shape: tuple[int, ...], num_classes: int) -> BuiltModel:
    """The model of ``spec`` and its trainable layers in forward order (0 = input side)."""
    if spec.skip and spec.depth % 2:
        raise ValueError(f"skip=true needs an even depth (got {spec.depth})")
    arch = _arch_for(spec, input_shape)
    f = _Factory(spec, arch)
    tracked: list[_Pending] = []
    # An MLP flattens any input; a CNN keeps (C, *spatial) and starts with C channels.
    n_in = math.prod(input_shape) if arch == "linear" else input_shape[0]
    hidden: list[nn.Module] = []
    if spec.skip:
        for _ in range(spec.depth // 2):
            hidden.append(_residual_block(f, n_in, tracked))
            n_in = spec.width
    else:
        for _ in range(spec.depth):
            hidden.append(_plain_layer(f, n_in, tracked))
            n_in = spec.width
    output = nn.Linear(spec.width, num_classes)
    tracked.append(_Pending(output, "output"))
    stem: nn.Module = nn.Flatten() if arch == "linear" else nn.Identity()
    pool: nn.Module = nn.Identity() if arch == "linear" else GlobalAvgPool()
    net = Net(stem, hidden, pool, output)
    _apply_init(spec, tracked)
    for block in hidden:
        if isinstance(block, ResidualBlock):
            _zero_last_branch_norm(block)
    return BuiltModel(module=net, layers=_finalize(net, tracked))


def _finalize(net: nn.Module, tracked: list[_Pending]) -> list[TrackedLayer]:
    names = {id(m): name for name, m in net.named_modules()}
    layers = []
    for index, p in enumerate(tracked):
        weight = p.module.weight
        assert isinstance(weight, torch.Tensor)
        info = LayerInfo(
            index=index,
            name=names[id(p.module)],
            kind=p.kind,
            params=count_parameters(p.module),
            shape=tuple(weight.shape),
            activation=p.activation,
        )
        saturation = saturation_of(p.activation)
        layers.append(TrackedLayer(info, p.module, p.activation_module, saturation))
    return layers
