"""Bad input gets a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

import mixkit

X, Y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("name", ["mixup", "cutmix", "resizemix", "fmix", "between_class"])
def test_wrong_rank(name):
    with pytest.raises(mixkit.ShapeError, match="x must have shape"):
        mixkit.create(name)(torch.rand(4), Y)


@pytest.mark.parametrize("name", ["cutmix", "resizemix", "fmix"])
def test_spatial_methods_need_spatial_dims(name):
    with pytest.raises(mixkit.ShapeError, match=r"\(B, C, H, W\)"):
        mixkit.create(name)(torch.rand(4, 3), Y)


def test_mismatched_batch_sizes():
    with pytest.raises(mixkit.ShapeError, match="y has batch size 3 but x has batch size 4"):
        mixkit.MixUp()(X, Y[:3])


def test_labels_out_of_range():
    with pytest.raises(mixkit.LabelError, match=r"outside \[0, 3\)"):
        mixkit.CutMix(num_classes=3)(X, Y)
    with pytest.raises(mixkit.LabelError, match="outside"):
        mixkit.CutMix()(X, torch.tensor([0, -1, 2, 3]))


def test_soft_label_width():
    with pytest.raises(mixkit.LabelError, match="5 columns but num_classes=4"):
        mixkit.MixUp(num_classes=4)(X, torch.rand(4, 5))


def test_label_dtypes():
    with pytest.raises(mixkit.LabelError, match="integer class indices"):
        mixkit.MixUp()(X, Y.float())
    with pytest.raises(mixkit.LabelError, match="floating point soft labels"):
        mixkit.MixUp()(X, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(mixkit.ShapeError, match=r"\(B,\) or \(B, K\)"):
        mixkit.MixUp()(X, torch.zeros(4, 2, 2))


def test_non_float_input_to_blend():
    with pytest.raises(mixkit.DTypeError, match="x must be floating point"):
        mixkit.MixUp()((X * 255).to(torch.uint8), Y)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_alpha(alpha):
    with pytest.raises(mixkit.HyperParameterError, match="alpha"):
        mixkit.create("mixup", alpha=alpha)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p(p):
    with pytest.raises(mixkit.HyperParameterError, match=r"p must be in \[0, 1\]"):
        mixkit.create("cutmix", p=p)


def test_mode_and_num_classes():
    with pytest.raises(mixkit.HyperParameterError, match="mode"):
        mixkit.create("fmix", mode="pair")
    with pytest.raises(mixkit.HyperParameterError, match="num_classes"):
        mixkit.create("fmix", num_classes=0)
    with pytest.raises(mixkit.HyperParameterError, match="scale"):
        mixkit.create("resizemix", scale=(0.5, 0.2))


def test_unknown_method_suggests():
    with pytest.raises(mixkit.UnknownMethodError, match="Did you mean 'cutmix'"):
        mixkit.create("cutmx")
    with pytest.raises(KeyError):
        mixkit.method_info("nope")


def test_unknown_hyperparameter_suggests():
    with pytest.raises(mixkit.UnknownHyperParameterError, match="Did you mean 'alpha'"):
        mixkit.create("mixup", alpah=0.2)
    with pytest.raises(TypeError):
        mixkit.MixUp(alpah=0.2)


def test_generator_must_be_cpu_torch_generator():
    with pytest.raises(TypeError, match="generator"):
        mixkit.MixUp()(X, Y, generator=0)


def test_empty_batch():
    with pytest.raises(mixkit.ShapeError, match="at least one sample"):
        mixkit.MixUp()(torch.rand(0, 3), torch.zeros(0, dtype=torch.long))


def test_errors_are_standard_exceptions_too():
    assert issubclass(mixkit.ShapeError, ValueError) and issubclass(mixkit.DTypeError, TypeError)
    assert issubclass(mixkit.UnknownMethodError, KeyError) and issubclass(mixkit.LabelError, mixkit.MixkitError)


def test_bad_hyperparameter_values_name_the_argument():
    with pytest.raises(mixkit.HyperParameterError, match="scale"):
        mixkit.create("resizemix", scale=0.5)
    with pytest.raises(mixkit.HyperParameterError, match="decay_power"):
        mixkit.create("fmix", decay_power=float("inf"))
    with pytest.raises(mixkit.HyperParameterError, match="alpha must be a number"):
        mixkit.create("mixup", alpha="a")


@pytest.mark.parametrize("name", ["cutmix", "fmix", "resizemix", "mixup"])
def test_empty_spatial_dimension(name):
    with pytest.raises(mixkit.ShapeError, match="empty dimension"):
        mixkit.create(name)(torch.rand(4, 3, 0, 8), Y)
