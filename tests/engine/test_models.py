from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional

from service.specs import ModelSpec
from worker.engine.dropconnect import DropConnectConv1d, DropConnectLinear
from worker.engine.models import BuiltModel, Net, ResidualBlock, build_model, count_parameters

SEQ = (1, 40)
IMAGE = (1, 8, 8)


def build(input_shape: tuple[int, ...] = SEQ, num_classes: int = 10, **kw: Any) -> BuiltModel:
    torch.manual_seed(0)
    return build_model(ModelSpec(**kw), input_shape=input_shape, num_classes=num_classes)


def net(built: BuiltModel) -> Net:
    assert isinstance(built.module, Net)
    return built.module


def weight(module: nn.Module) -> torch.Tensor:
    assert isinstance(module.weight, torch.Tensor)
    return module.weight


def bias(module: nn.Module) -> torch.Tensor:
    assert isinstance(module.bias, torch.Tensor)
    return module.bias


def forward_order(built: BuiltModel, x: torch.Tensor) -> list[nn.Module]:
    """Tracked modules in the order the forward pass calls them."""
    called: list[nn.Module] = []
    handles = [
        layer.module.register_forward_pre_hook(lambda m, _: called.append(m))
        for layer in built.layers
    ]
    built.module(x)
    for h in handles:
        h.remove()
    return called


# --- parameter counts, by hand ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "input_shape", "expected"),
    [
        # 40*8+8, (8*8+8)*2, 8*10+10
        ({"depth": 3, "width": 8}, SEQ, 328 + 144 + 90),
        # batch norm drops the layer biases and adds gamma and beta
        ({"depth": 3, "width": 8, "norm": "batch"}, SEQ, 320 + 16 + (64 + 16) * 2 + 90),
        ({"depth": 3, "width": 8, "norm": "layer"}, SEQ, 328 + 16 + (72 + 16) * 2 + 90),
        # projection 40*8 (no bias) on top of the plain twin's 328+72*3+90
        ({"depth": 4, "width": 8, "skip": True}, SEQ, 320 + 328 + 72 * 3 + 90),
        # conv 1->4 k5: 4*5+4; conv 4->4 k5: 4*4*5+4; output 4*10+10
        ({"arch": "cnn", "depth": 2, "width": 4}, SEQ, 24 + 84 + 50),
        # conv 1->4 3x3: 4*9+4; conv 4->4 3x3: 4*4*9+4; output 4*10+10
        ({"arch": "cnn", "depth": 2, "width": 4, "kernel_size": 3}, IMAGE, 40 + 148 + 50),
        # 1x1 projection 1->4 adds 4
        ({"arch": "cnn", "depth": 2, "width": 4, "skip": True}, SEQ, 4 + 24 + 84 + 50),
    ],
)
def test_parameter_counts_match_hand_computed(
    kw: dict[str, Any], input_shape: tuple[int, ...], expected: int
) -> None:
    built = build(input_shape, **kw)
    assert count_parameters(built.module) == expected
    assert sum(layer.info.params for layer in built.layers) == expected


def test_count_parameters_skips_frozen() -> None:
    built = build(depth=1, width=8)
    net(built).output.requires_grad_(False)
    assert count_parameters(built.module) == 328


# --- tracked layers ---------------------------------------------------------------------

CONFIGS: list[tuple[dict[str, Any], tuple[int, ...]]] = [
    ({"depth": 3, "width": 8}, SEQ),
    ({"depth": 3, "width": 8, "norm": "batch", "dropout": 0.2}, IMAGE),
    ({"depth": 4, "width": 8, "skip": True, "norm": "layer", "dropconnect": 0.3}, SEQ),
    ({"depth": 4, "width": 40, "skip": True, "norm": "batch"}, SEQ),
    ({"arch": "cnn", "depth": 4, "width": 4, "skip": True, "norm": "batch"}, SEQ),
    ({"arch": "cnn", "depth": 3, "width": 4, "norm": "layer", "dropout": 0.1}, IMAGE),
]


@pytest.mark.parametrize(("kw", "input_shape"), CONFIGS)
def test_tracked_layers_are_every_parametrized_module_in_forward_order(
    kw: dict[str, Any], input_shape: tuple[int, ...]
) -> None:
    built = build(input_shape, **kw)
    with_params = [
        m for m in built.module.modules() if any(True for _ in m.parameters(recurse=False))
    ]
    tracked = [layer.module for layer in built.layers]
    assert {id(m) for m in tracked} == {id(m) for m in with_params}
    assert [layer.info.index for layer in built.layers] == list(range(len(tracked)))
    assert forward_order(built, torch.randn(4, *input_shape)) == tracked


@pytest.mark.parametrize(("kw", "input_shape"), CONFIGS)
def test_layer_info_describes_each_module(kw: dict[str, Any], input_shape: tuple[int, ...]) -> None:
    built = build(input_shape, **kw)
    modules = dict(built.module.named_modules())
    for layer in built.layers:
        info = layer.info
        assert modules[info.name] is layer.module
        assert info.params == count_parameters(layer.module)
        assert info.shape == tuple(weight(layer.module).shape)
        has_act = layer.activation_module is not None
        assert (info.activation is not None) == has_act
        assert has_act == (info.kind in ("linear", "conv1d", "conv2d"))
    assert built.layers[-1].info.kind == "output"
    assert built.layers[-1].info.name == "output"


def test_kinds_and_activation_names() -> None:
    built = build(IMAGE, arch="cnn", depth=2, width=4, norm="layer", activation="tanh")
    assert [layer.info.kind for layer in built.layers] == [
        "conv2d",
        "groupnorm",
        "conv2d",
        "groupnorm",
        "output",
    ]
    assert [layer.info.activation for layer in built.layers] == ["tanh", None, "tanh", None, None]
    assert [layer.saturation for layer in built.layers] == ["tanh", "none", "tanh", "none", "none"]
    assert isinstance(built.layers[1].module, nn.GroupNorm)
    assert built.layers[1].module.num_groups == 1


@pytest.mark.parametrize(
    ("activation", "saturation"),
    [
        ("sigmoid", "sigmoid"),
        ("tanh", "tanh"),
        ("relu", "relu"),
        ("leaky_relu", "none"),
        ("elu", "none"),
        ("gelu", "none"),
        ("silu", "none"),
    ],
)
def test_saturation_kind_follows_activation(activation: str, saturation: str) -> None:
    built = build(depth=1, width=4, activation=activation)
    assert built.layers[0].saturation == saturation
    assert built.layers[0].info.activation == activation


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_sits_between_layer_and_activation(norm: str) -> None:
    built = build(depth=2, width=8, norm=norm)
    layer, norm_layer = built.layers[0], built.layers[1]
    assert layer.activation_module is not None
    seen: dict[str, torch.Tensor] = {}
    norm_layer.module.register_forward_hook(lambda m, i, o: seen.__setitem__("norm", o))
    layer.activation_module.register_forward_hook(lambda m, i, o: seen.__setitem__("pre", i[0]))
    built.module(torch.randn(16, *SEQ))
    assert torch.equal(seen["norm"], seen["pre"])


def test_activation_hook_sees_pre_and_post_activation() -> None:
    built = build(depth=2, width=8, activation="sigmoid")
    layer = built.layers[0]
    assert layer.activation_module is not None
    seen: dict[str, torch.Tensor] = {}
    layer.module.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))

    def on_act(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
        seen["pre"], seen["post"] = i[0], o

    layer.activation_module.register_forward_hook(on_act)
    built.module(torch.randn(4, *SEQ))
    assert torch.equal(seen["pre"], seen["out"])
    assert torch.equal(seen["post"], torch.sigmoid(seen["out"]))


def test_activation_modules_are_distinct_per_layer() -> None:
    built = build(depth=4, width=8, skip=True)
    acts = [layer.activation_module for layer in built.layers if layer.activation_module]
    assert len(acts) == 4
    assert len({id(a) for a in acts}) == 4


# --- residual blocks --------------------------------------------------------------------


def test_skip_groups_hidden_layers_in_blocks_of_two_with_projection() -> None:
    built = build(depth=4, width=8, skip=True)
    blocks = list(net(built).hidden)
    assert len(blocks) == 2
    assert all(isinstance(b, ResidualBlock) for b in blocks)
    kinds = [layer.info.kind for layer in built.layers]
    assert kinds == ["projection", "linear", "linear", "linear", "linear", "output"]
    assert built.layers[0].info.name == "hidden.0.proj"
    assert built.layers[0].info.shape == (8, 40)


def test_no_projection_when_shapes_match() -> None:
    built = build((1, 8), depth=4, width=8, skip=True)
    assert "projection" not in [layer.info.kind for layer in built.layers]


@pytest.mark.parametrize(
    ("kw", "input_shape"),
    [
        ({"depth": 6, "width": 8, "norm": "batch"}, SEQ),
        ({"arch": "cnn", "depth": 4, "width": 4, "norm": "layer"}, IMAGE),
    ],
)
def test_residual_twin_has_the_plain_nets_weight_layers(
    kw: dict[str, Any], input_shape: tuple[int, ...]
) -> None:
    def weight_layers(built: BuiltModel) -> list[tuple[str, tuple[int, ...]]]:
        return [
            (lay.info.kind, lay.info.shape) for lay in built.layers if lay.info.kind != "projection"
        ]

    plain, residual = build(input_shape, **kw), build(input_shape, skip=True, **kw)
    assert weight_layers(plain) == weight_layers(residual)


def test_odd_depth_with_skip_is_rejected() -> None:
    with pytest.raises(ValueError, match="even depth"):
        build(depth=3, skip=True)


@pytest.mark.parametrize(
    ("kw", "input_shape"),
    [
        ({"norm": "batch"}, SEQ),
        ({"norm": "layer", "activation": "tanh", "init": "kaiming"}, SEQ),
        ({"arch": "cnn", "norm": "batch"}, IMAGE),
        ({"arch": "cnn", "norm": "layer"}, SEQ),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_residual_block_with_norm_is_identity_at_init(
    kw: dict[str, Any], input_shape: tuple[int, ...], train: bool
) -> None:
    built = build(input_shape, depth=4, width=6, skip=True, **kw)
    built.module.train(train)
    x = net(built).stem(torch.randn(8, *input_shape))
    for block in net(built).hidden:
        assert isinstance(block, ResidualBlock)
        assert torch.count_nonzero(block.branch(x)) == 0
        torch.testing.assert_close(block(x), block.act(block.proj(x)), rtol=0, atol=0)
        x = block(x)


def test_residual_branch_without_norm_keeps_its_init() -> None:
    built = build(depth=2, width=8, skip=True)
    (block,) = net(built).hidden
    assert isinstance(block, ResidualBlock)
    assert torch.count_nonzero(block.branch(torch.randn(8, 40))) > 0


# --- CNN shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_shape", "conv", "kind"),
    [(SEQ, nn.Conv1d, "conv1d"), (IMAGE, nn.Conv2d, "conv2d")],
)
def test_cnn_keeps_positions_and_pools_to_classes(
    input_shape: tuple[int, ...], conv: type[nn.Module], kind: str
) -> None:
    built = build(input_shape, num_classes=7, arch="cnn", depth=3, width=5, kernel_size=3)
    seen: list[torch.Size] = []
    for layer in built.layers[:-1]:
        assert isinstance(layer.module, conv)
        assert layer.info.kind == kind
        layer.module.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = built.module(torch.randn(2, *input_shape))
    assert out.shape == (2, 7)
    assert seen == [torch.Size((2, 5, *input_shape[1:]))] * 3
    assert built.layers[0].info.shape == (5, 1, *([3] * (len(input_shape) - 1)))


def test_cnn_rejects_a_table() -> None:
    with pytest.raises(ValueError, match="cnn needs"):
        build((2,), arch="cnn")


def test_mlp_flattens_images() -> None:
    built = build(IMAGE, depth=1, width=3)
    assert built.layers[0].info.shape == (3, 64)
    assert built.module(torch.randn(2, *IMAGE)).shape == (2, 10)


# --- dropout and DropConnect ----------------------------------------------------------------


def test_dropout_follows_hidden_activations_only() -> None:
    built = build(depth=2, width=8, dropout=0.5)
    drops = [name for name, m in built.module.named_modules() if isinstance(m, nn.Dropout)]
    assert drops == ["hidden.0.drop", "hidden.1.drop"]
    built.module.eval()
    x = torch.randn(4, *SEQ)
    assert torch.equal(built.module(x), built.module(x))


def test_dropconnect_replaces_hidden_layers_only() -> None:
    built = build(depth=4, width=8, skip=True, dropconnect=0.5)
    kinds = {lay.info.kind: type(lay.module) for lay in built.layers}
    assert kinds["linear"] is DropConnectLinear
    assert kinds["projection"] is nn.Linear
    assert kinds["output"] is nn.Linear
    # The weight stays the parameter that optimizers and statistics see.
    assert isinstance(built.layers[1].module.weight, nn.Parameter)
    cnn = build(arch="cnn", depth=1, width=4, dropconnect=0.5)
    assert isinstance(cnn.layers[0].module, DropConnectConv1d)


def effective_weight(layer: DropConnectLinear) -> torch.Tensor:
    """W_eff, read through the forward pass: eye @ W_eff^T = W_eff^T (bias is zero)."""
    out: torch.Tensor = layer(torch.eye(layer.in_features))
    return out.T


def dropconnect_layer(p: float) -> DropConnectLinear:
    torch.manual_seed(0)
    layer = DropConnectLinear(200, 100, p=p)
    nn.init.zeros_(layer.bias)
    return layer


def test_dropconnect_training_masks_weights_with_inverted_scaling() -> None:
    p = 0.3
    layer = dropconnect_layer(p)
    w_eff = effective_weight(layer)
    kept = w_eff != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.01  # 20,000 entries: std ~0.003
    torch.testing.assert_close(w_eff[kept], layer.weight[kept] / (1 - p))
    # A new mask every forward.
    assert not torch.equal(kept, effective_weight(layer) != 0)


def test_dropconnect_forwards_differ_in_training() -> None:
    layer = dropconnect_layer(0.5)
    x = torch.randn(4, 200)
    assert not torch.equal(layer(x), layer(x))


def test_dropconnect_eval_uses_full_weights() -> None:
    layer = dropconnect_layer(0.5)
    nn.init.normal_(layer.bias)
    layer.eval()
    x = torch.randn(4, 200)
    out = layer(x)
    assert torch.equal(out, functional.linear(x, layer.weight, layer.bias))
    assert torch.equal(out, layer(x))


def test_dropconnect_conv_eval_matches_plain_conv() -> None:
    torch.manual_seed(0)
    layer = DropConnectConv1d(3, 4, p=0.5, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 10)
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), functional.conv1d(x, layer.weight, layer.bias, padding=1))


def test_dropconnect_gradient_reaches_kept_weights_only() -> None:
    p = 0.4
    layer = dropconnect_layer(p)
    w_eff = effective_weight(layer)
    (grad,) = torch.autograd.grad(w_eff.sum(), layer.weight)
    kept = w_eff.detach() != 0
    assert torch.count_nonzero(grad[~kept]) == 0
    torch.testing.assert_close(grad[kept], torch.full_like(grad[kept], 1 / (1 - p)))


def test_dropconnect_rejects_p_of_one() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropConnectLinear(2, 2, p=1.0)


# --- inits ----------------------------------------------------------------------------------


def wide_layers(**kw: Any) -> BuiltModel:
    # 256x256 weights: the sample std is within ~1 % of the true one.
    return build((1, 256), depth=2, width=256, **kw)


@pytest.mark.parametrize(
    ("activation", "gain"),
    [
        ("relu", math.sqrt(2)),
        ("gelu", math.sqrt(2)),
        ("tanh", 5 / 3),
        ("sigmoid", 1.0),
        ("leaky_relu", math.sqrt(2 / (1 + 0.01**2))),
    ],
)
def test_kaiming_init_std_is_gain_over_sqrt_fan_in(activation: str, gain: float) -> None:
    built = wide_layers(init="kaiming", activation=activation)
    hidden = built.layers[1].module
    assert weight(hidden).std().item() == pytest.approx(gain / math.sqrt(256), rel=0.03)
    assert torch.count_nonzero(bias(hidden)) == 0
    output = built.layers[-1].module  # no activation: linear gain
    assert weight(output).std().item() == pytest.approx(1 / math.sqrt(256), rel=0.1)


def test_kaiming_conv_uses_fan_in_of_kernel() -> None:
    built = build((1, 40), arch="cnn", depth=2, width=64, kernel_size=5, init="kaiming")
    conv = built.layers[1].module
    assert weight(conv).std().item() == pytest.approx(math.sqrt(2 / (64 * 5)), rel=0.03)


def test_xavier_init_std() -> None:
    built = wide_layers(init="xavier", activation="tanh")
    expected = 5 / 3 * math.sqrt(2 / (256 + 256))
    assert weight(built.layers[1].module).std().item() == pytest.approx(expected, rel=0.03)
    assert weight(built.layers[1].module).abs().max().item() <= expected * math.sqrt(3)


def test_normal_init_std() -> None:
    built = wide_layers(init="normal", init_std=0.05)
    for layer in built.layers:
        assert weight(layer.module).std().item() == pytest.approx(0.05, rel=0.05)
        assert torch.count_nonzero(bias(layer.module)) == 0


def test_default_init_is_pytorchs() -> None:
    built = wide_layers()
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1 / math.sqrt(256)
    hidden = built.layers[1].module
    assert weight(hidden).std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert torch.count_nonzero(bias(hidden)) > 0


def test_kaiming_does_not_touch_norm_layers() -> None:
    built = build(depth=2, width=8, norm="batch", init="kaiming")
    norm = built.layers[1].module
    assert torch.equal(weight(norm), torch.ones(8))
    assert torch.equal(bias(norm), torch.zeros(8))
