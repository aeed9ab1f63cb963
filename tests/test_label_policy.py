"""The label-policy base: delegation to the sample policy, the loss hook, held-out splits."""

from __future__ import annotations

import pickle

import pytest
import torch

import mixkit
from mixkit.holdout import Holdout, split_holdout
from mixkit.label_policy import LabelPolicy
from mixkit.losses import mixup_cross_entropy
from mixkit.train import engine
from conftest import TinyNet, gen
from test_train import tiny_config, tiny_data, tiny_model


class DoubleLoss(LabelPolicy):
    """A test policy: twice the engine's loss, counting the calls it sees."""

    def __init__(self, *, method="mixup", method_args=None, p=None, mode=None, num_classes=None, scale=2.0):
        super().__init__(method=method, method_args=method_args, p=p, mode=mode, num_classes=num_classes)
        self.scale = scale
        self.calls = 0

    def loss(self, logits, target, criterion):
        self.calls += 1
        return self.scale * criterion(logits, target)


class HoldoutPolicy(DoubleLoss):
    """A test policy that asks for a held-out split and measures it after each epoch."""

    holdout_fraction = 0.25

    def attach_holdout(self, holdout):
        self.holdout = holdout

    def epoch_end(self, model):
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in self.holdout.batches(7))
        return {"holdout_acc": 100.0 * correct / len(self.holdout)}


def test_calling_a_policy_mixes_as_its_method():
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 3
    policy = DoubleLoss(method="cutmix", p=1.0, num_classes=3)
    inner = mixkit.create("cutmix", p=1.0, num_classes=3)
    a, b = policy(x, y, generator=gen(3)), inner(x, y, generator=gen(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.target.soft(), b.target.soft())
    assert policy.inner.p == 1.0 and policy.num_classes == 3


def test_shared_options_reach_a_named_method_and_objects_pass_through():
    assert DoubleLoss(method="mixup", p=0.25, mode="elem").inner.hparams["mode"] == "elem"
    assert DoubleLoss(method="mixup", p=0.25).inner.p == 0.25
    obj = mixkit.create("fmix", alpha=2.0)
    assert DoubleLoss(method=obj).inner is obj
    assert DoubleLoss(method="mixup", method_args={"alpha": 0.2}).inner.alpha == 0.2


def test_bad_inner_methods_are_refused():
    with pytest.raises(ValueError, match="sample policy"):
        DoubleLoss(method=DoubleLoss())
    with pytest.raises(ValueError, match="method_args"):
        DoubleLoss(method=mixkit.create("mixup"), method_args={"alpha": 1.0})
    with pytest.raises(ValueError, match="registry name"):
        DoubleLoss(method=3)


def test_train_step_runs_the_methods_own_step_with_the_policy_loss():
    """Manifold Mixup mixes inside the model (a hook): the policy keeps that path."""
    torch.manual_seed(0)
    model = TinyNet(3, 4)
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    inner = mixkit.create("manifold_mixup", layers=("layer1",), num_classes=4)
    policy = DoubleLoss(method=inner)
    base = inner.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(1))
    doubled = policy.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(1))
    assert policy.calls == 1
    torch.testing.assert_close(doubled.loss, 2 * base.loss)
    torch.testing.assert_close(doubled.logits, base.logits)


def test_pickle_and_state_round_trip():
    policy = DoubleLoss(method="cutmix", p=0.5, scale=3.0)
    again = pickle.loads(pickle.dumps(policy))
    assert again.hparams == policy.hparams and again.inner.p == 0.5
    assert again.state_dict() == {"method": {}, "policy": {}}
    with pytest.raises(ValueError, match="no state"):
        again.load_state_dict({"method": {}, "policy": {"x": 1}})


def test_split_holdout_is_per_class_disjoint_and_seeded():
    labels = torch.arange(40) % 4
    tr, ho = split_holdout(labels, 0.2, seed=1)
    assert len(set(tr.tolist()) & set(ho.tolist())) == 0 and len(tr) + len(ho) == 40
    assert torch.bincount(labels[ho], minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(split_holdout(labels, 0.2, seed=1)[1], ho)
    assert not torch.equal(split_holdout(labels, 0.2, seed=2)[1], ho)
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(labels, 1.0)


def test_holdout_batches_and_samples_are_prepared():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    h = Holdout(images, torch.arange(10), prepare=lambda t: t.float() / 10)
    xs = torch.cat([x for x, _ in h.batches(4)])
    torch.testing.assert_close(xs.flatten(), torch.arange(10) / 10)
    x, y = h.sample(3, gen(0))
    torch.testing.assert_close(x.flatten(), y.float() / 10)
    with pytest.raises(ValueError, match="same length"):
        Holdout(images, torch.arange(3))


def test_engine_splits_holdout_and_logs_epoch_end(tmp_path, monkeypatch):
    policy = HoldoutPolicy(num_classes=4)
    monkeypatch.setattr(engine, "create_method", lambda cfg, n: policy)
    cfg = tiny_config(tmp_path, method="mixup", epochs=2)
    metrics = engine.train(cfg, data=tiny_data(), model=tiny_model())
    assert len(policy.holdout) == 12  # a quarter of each class of 48
    assert metrics["epochs"][0]["images"] == 36
    assert all(0 <= e["method"]["holdout_acc"] <= 100 for e in metrics["epochs"])
    assert policy.calls == 2 * 3  # 36 images in batches of 16, two epochs


def test_engine_wraps_the_method_in_a_label_policy(monkeypatch):
    from mixkit.train.config import TrainConfig

    created = {}
    monkeypatch.setattr(engine, "create", lambda name, **kw: created.setdefault(name, (name, kw)))
    monkeypatch.setattr(engine, "method_info", lambda name: mixkit.method_info("mixup") if name == "cutmix"
                        else type("I", (), {"family": "label", "defaults": {"num_classes": None}})())
    engine.create_method(TrainConfig(method="cutmix", label_policy="somepolicy", label_policy_args={"eta": 0.5}), 7)
    assert created["somepolicy"][1]["method"] == ("cutmix", {"num_classes": 7})
    assert created["somepolicy"][1]["eta"] == 0.5 and created["somepolicy"][1]["num_classes"] == 7


def test_a_sample_policy_is_refused_as_label_policy():
    from mixkit.train.config import TrainConfig

    with pytest.raises(ValueError, match="label policy"):
        engine.create_method(TrainConfig(method="mixup", label_policy="cutmix"), 10)
