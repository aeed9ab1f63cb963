"""The model zoo: sizes, shapes, hookable stages, memory formats, autocast, gradients, registry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixkit
from mixkit.errors import HyperParameterError, ModelError, ShapeError, UnknownHyperParameterError
from mixkit.models import (
    CifarResNet,
    PreActResNet,
    ResNeXt,
    WideResNet,
    cifar_resnet,
    create_model,
    list_models,
    model_stages,
    wide_resnet28,
)

# Exact sizes for 10 classes; they pin the architectures (option-A ResNets, kuangliu/mixup
# PreAct ResNet-18, torchvision-style ResNeXt with a 3x3 stem, xternalz/official WRN).
PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "preact_resnet18": 11_171_146,
    "resnext50_32x4d": 22_992_714,
    "wrn28_2": 1_467_610,
    "wrn28_10": 36_479_194,
}
# The sizes the literature quotes, as ranges.
QUOTED = {
    "resnet20": (0.26e6, 0.28e6),
    "preact_resnet18": (11.1e6, 11.3e6),
    "resnext50_32x4d": (22.5e6, 23.5e6),
    "wrn28_10": (36.3e6, 36.7e6),
}

# One cheap instance per architecture family, for forward/backward tests.
SMALL = {
    "resnet20": lambda c, k: CifarResNet(20, in_channels=c, num_classes=k),
    "resnet8_B": lambda c, k: cifar_resnet(8, in_channels=c, num_classes=k, shortcut="B"),
    "preact_w8": lambda c, k: PreActResNet((2, 2, 2, 2), in_channels=c, num_classes=k, width=8),
    "resnext_1111_2x4d": lambda c, k: ResNeXt((1, 1, 1, 1), in_channels=c, num_classes=k, cardinality=2),
    "wrn10_1_drop": lambda c, k: WideResNet(10, 1, in_channels=c, num_classes=k, dropout=0.3),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs) -> nn.Module:
    """Build a registered model without allocating or initialising its weights."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def stage_calls(model: nn.Module) -> tuple[dict[str, int], list]:
    """Count the calls of stem, every stage and fc through forward hooks."""
    calls = {name: 0 for name in ("stem", *model.stage_names, "fc")}

    def counter(name):
        def hook(module, args, output):
            calls[name] += 1

        return hook

    handles = [model.get_submodule(n).register_forward_hook(counter(n)) for n in calls]
    return calls, handles


def seeded(factory, *args, **kwargs):
    torch.manual_seed(0)
    return factory(*args, **kwargs)


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count(name):
    model = on_meta(name, num_classes=10)
    count = n_params(model)
    assert count == PARAMS[name]
    low, high = QUOTED.get(name, (0, float("inf")))
    assert low <= count <= high


def test_parameter_count_follows_options():
    with torch.device("meta"):
        assert n_params(cifar_resnet(20, shortcut="B")) == PARAMS["resnet20"] + (16 * 32 + 32 * 64) + 2 * (32 + 64)
        assert n_params(wide_resnet28(2)) == PARAMS["wrn28_2"]
        grey = create_model("resnet20", num_classes=100, in_channels=1)
    assert n_params(grey) == PARAMS["resnet20"] - 2 * 9 * 16 + 90 * 65


# --- registry -------------------------------------------------------------------------------


def test_registry_lists_every_model_with_its_stages():
    assert list_models() == sorted(PARAMS)
    assert list_models("resnet*") == ["resnet110", "resnet20", "resnet32", "resnet44", "resnet56"]
    for name in list_models():
        model = on_meta(name, num_classes=3)
        assert model_stages(name) == model.stage_names
        assert model.stage_names[:3] == ("layer1", "layer2", "layer3")
        assert len(model.stage_names) == (4 if "resnext" in name or "preact" in name else 3)
        assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 3
        assert isinstance(model.stem, nn.Module)


def test_unknown_model_names_close_matches():
    with pytest.raises(ModelError, match="'resnet20'"):
        create_model("resnet21", num_classes=10)
    with pytest.raises(ModelError, match="resnext50_32x4d"):
        model_stages("resnext50")
    with pytest.raises(ValueError, match="Available"):  # ModelError is a ValueError
        create_model("vgg16", num_classes=10)


def test_bad_options_are_errors():
    with pytest.raises(UnknownHyperParameterError, match="'dropout'"):
        create_model("wrn28_2", num_classes=10, dropuot=0.3)
    with pytest.raises(UnknownHyperParameterError, match="none besides"):
        create_model("resnext50_32x4d", num_classes=10, width=32)
    with pytest.raises(HyperParameterError, match="6n \\+ 2"):
        cifar_resnet(21)
    with pytest.raises(HyperParameterError, match="shortcut"):
        cifar_resnet(20, shortcut="C")
    with pytest.raises(HyperParameterError, match="dropout"):
        wide_resnet28(2, dropout=1.0)
    with pytest.raises(HyperParameterError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_input_of_wrong_layout_is_a_shape_error():
    model = seeded(SMALL["resnet8_B"], 1, 10)
    with pytest.raises(ShapeError, match="unsqueeze"):
        model(torch.randn(2, 28, 28))
    with pytest.raises(ShapeError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(2, 3, 28, 28))


# --- forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 64)])
def test_logits_shape_and_each_stage_runs_once(arch, channels, size):
    model = seeded(SMALL[arch], channels, 7)
    calls, handles = stage_calls(model)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert set(calls.values()) == {1}, calls
    out = model(torch.randn(3, channels, size, size))
    assert set(calls.values()) == {2}, calls
    for h in handles:
        h.remove()


@pytest.mark.parametrize("name", ["preact_resnet18", "resnext50_32x4d", "wrn28_10"])
def test_full_size_models_forward_at_batch_one(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    calls, _ = stage_calls(model)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28).to(memory_format=torch.channels_last))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    assert set(calls.values()) == {1}, calls


@pytest.mark.parametrize("arch", list(SMALL))
def test_channels_last_equals_contiguous(arch):
    model = seeded(SMALL[arch], 3, 10).eval()
    x = torch.randn(4, 3, 32, 32)
    seen = []
    model.layer3.register_forward_hook(lambda m, a, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        reference = model(x)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert seen == [False, True]  # the memory format is kept through the stages


@pytest.mark.parametrize("arch", list(SMALL))
def test_bfloat16_autocast_channels_last(arch):
    model = seeded(SMALL[arch], 3, 10).eval()
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.0, atol=0.05 * float(reference.abs().max()))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    F.cross_entropy(out.float(), torch.arange(4)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_dropout_is_active_only_in_training():
    model = seeded(SMALL["wrn10_1_drop"], 3, 10)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in wide_resnet28(1, dropout=0.0).modules())


# --- gradients and initialisation -----------------------------------------------------------


@pytest.mark.parametrize("arch", list(SMALL))
def test_gradients_reach_every_parameter(arch):
    model = seeded(SMALL[arch], 3, 10)
    out = model(torch.randn(2, 3, 32, 32))
    F.cross_entropy(out, torch.tensor([1, 7])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_resnet20_sgd_step_changes_every_parameter():
    model = seeded(create_model, "resnet20", num_classes=10)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 9])).backward()
    opt.step()
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


def test_kaiming_initialisation():
    model = seeded(create_model, "wrn28_2", num_classes=10)
    conv = model.layer3[1].conv2
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.05 * (2 / fan_out) ** 0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)
    assert not model.fc.bias.any()


# --- feature-level mixing through the named stages -------------------------------------------


def test_mixing_at_a_stage_by_hook_equals_mixing_by_hand():
    model = seeded(create_model, "resnet20", num_classes=10).eval()
    x = torch.randn(4, 3, 28, 28)
    perm = torch.tensor([2, 0, 3, 1])

    def mix(h):
        return 0.7 * h + 0.3 * h[perm]

    with torch.no_grad():
        with mixkit.mix_features(model, "layer2", mix):
            hooked = model(x)
        h = mix(model.layer2(model.layer1(model.stem(x))))
        by_hand = model.fc(torch.flatten(F.adaptive_avg_pool2d(model.layer3(h), 1), 1))
    torch.testing.assert_close(hooked, by_hand)


@pytest.mark.parametrize("arch", list(SMALL))
def test_manifold_mixup_at_every_stage(arch):
    model = seeded(SMALL[arch], 1, 5)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    assert set(mixkit.ManifoldMixup().layers) <= {"input", *model.stage_names}
    for layer in ("input", *model.stage_names):
        out = mixkit.ManifoldMixup(layers=(layer,))(x, y, model=model, generator=torch.Generator().manual_seed(0))
        assert out.logits.shape == (4, 5) and out.params.layer == layer
