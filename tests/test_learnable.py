"""The shared machinery of learnable mixup (mixkit.learnable), with a tiny dummy Mixer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TinyNet, gen
from mixkit import rng
from mixkit.learnable import LearnableMixMethod, MomentumEncoder, cosine_value, load_mixer, momentum_at, resolve_stage
from mixkit.types import MixTarget


class _DummyMixer(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(2 * in_channels + 1, 1, 1)

    def forward(self, z, index, lam, size):
        lam_map = lam.to(z.dtype).view(-1, 1, 1, 1).expand(-1, 1, *z.shape[2:])
        m = self.conv(torch.cat([z, z[index], lam_map], dim=1))
        return torch.sigmoid(F.interpolate(m, size=size, mode="nearest"))


class Dummy(LearnableMixMethod):
    """A minimal subclass: the API a subclass author implements. Example: none (test only)."""

    name = "dummy_learnable"

    def __init__(self, *, total_steps=None, clean_weight=1.0, p=1.0, mode="batch", num_classes=None):
        super().__init__(alpha=2.0, stage="auto", momentum=0.9, momentum_end=0.99, lam_margin=0.08,
                         mixer_lr=0.1, mixer_min_lr=0.01, mixer_momentum=0.9, mixer_weight_decay=1e-4,
                         clean_weight=clean_weight, total_steps=total_steps, p=p, mode=mode, num_classes=num_classes)

    def build_mixer(self, channels, generator):
        mixer = _DummyMixer(channels)
        with torch.no_grad():
            mixer.conv.weight.copy_(rng.normal(tuple(mixer.conv.weight.shape), generator=generator) * 0.1)
            mixer.conv.bias.zero_()
        return mixer

    def mixer_config(self):
        return {}

    def generate_mask(self, feats, index, lam, *, size):
        return self.mixer(feats, index, lam, size)

    def mixer_loss(self, logits, y, index, lam, mask):
        soft = MixTarget.pair(y, index, lam).soft(logits.shape[1])
        ce = -(soft * logits.log_softmax(1)).sum(1).mean()
        prior = (mask.mean() - lam.to(mask.dtype).mean()).abs()
        return ce + prior, {"prior": float(prior.detach())}


def ce(logits, target):
    return -(target.soft(logits.shape[1]) * logits.log_softmax(1)).sum(1).mean()


def data(b=8, seed=0):
    g = gen(seed)
    return torch.rand(b, 3, 8, 8, generator=g), torch.randint(0, 5, (b,), generator=g)


def test_schedules_closed_form():
    assert momentum_at(5, 100) == 0.999 and momentum_at(5, None) == 0.999
    t = 40 / 100
    assert momentum_at(40, 100) == pytest.approx(0.999999 - (0.999999 - 0.999) * (math.cos(math.pi * t) + 1) / 2)
    assert momentum_at(100, 100) == pytest.approx(0.999999)
    assert cosine_value(0, 10, 0.1, 1e-3) == pytest.approx(0.1) and cosine_value(10, 10, 0.1, 1e-3) == pytest.approx(1e-3)
    assert cosine_value(5, 10, 0.1, 0.0) == pytest.approx(0.05)


def test_stage_auto_and_errors(tiny_net):
    assert resolve_stage(tiny_net, "auto") == "layer2"
    with pytest.raises(Exception, match="no submodule"):
        resolve_stage(tiny_net, "layer9")


def test_encoder_features_ema_and_gradient_to_input(tiny_net):
    enc = MomentumEncoder(tiny_net, "layer1")
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert torch.equal(enc.features(x), tiny_net.layer1(tiny_net.stem(x)))
    enc(x).sum().backward()
    assert x.grad is not None and all(q.grad is None and not q.requires_grad for q in enc.parameters())
    before = [q.clone() for q in enc.parameters()]
    with torch.no_grad():
        for q in tiny_net.parameters():
            q.add_(1.0)
    enc.update(tiny_net, 0.9)
    for k0, k, q in zip(before, enc.parameters(), tiny_net.parameters()):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q)


def test_gradients_kept_apart(tiny_net):
    m = Dummy(num_classes=5)
    x, y = data()
    out = m.train_step(tiny_net, x, y, criterion=ce, generator=gen(1))
    assert all(q.grad is None for q in tiny_net.parameters())  # the mixer loss never reached the model
    mixer_grads = [q.grad.clone() for q in m.mixer.parameters()]
    assert any(g.abs().sum() > 0 for g in mixer_grads)
    grads = torch.autograd.grad(out.loss, list(m.mixer.parameters()), allow_unused=True)
    assert all(g is None for g in grads)  # the classifier's loss never reaches the mixer
    out.loss.backward()
    assert all(q.grad is not None for q in tiny_net.parameters())
    assert all(torch.equal(q.grad, g) for q, g in zip(m.mixer.parameters(), mixer_grads))
    assert "mixer_loss" in out.logs and out.logits.shape == (8, 5)


def test_ema_follows_schedule(tiny_net):
    m = Dummy(total_steps=10, clean_weight=0.0)
    x, y = data()
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.5)
    snapshot: list[torch.Tensor] | None = None  # the model after the engine's previous step
    checked = 0
    for step in range(4):
        before = [q.clone() for q in m.encoder.parameters()] if m.encoder else None
        out = m.train_step(tiny_net, x, y, criterion=ce, generator=gen(step))
        if before is not None:  # the update at step t uses the model after the engine's step t-1
            assert snapshot is not None
            mt = momentum_at(step, 10, 0.9, 0.99)
            for k0, k, q in zip(before, m.encoder.parameters(), snapshot, strict=True):
                torch.testing.assert_close(k, mt * k0 + (1 - mt) * q)
            checked += 1
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        snapshot = [q.detach().clone() for q in tiny_net.parameters()]
    assert checked == 3  # the encoder is made at step 0, then follows the model at every step
    assert m.step == 4 and m.progress == pytest.approx(0.4)


def run(m, model, opt, steps, start):
    losses = []
    for s in range(start, start + steps):
        x, y = data(seed=s)
        out = m.train_step(model, x, y, criterion=ce, generator=gen(100 + s))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.detach())
    return torch.stack(losses)


def test_state_round_trip_exact(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    m = Dummy(total_steps=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run(m, model, opt, 3, 0)
    state = copy.deepcopy(m.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    a = run(m, model, opt, 3, 3)
    m2 = Dummy(total_steps=20)
    m2.load_state_dict(state)
    assert m2.state_dict()["step"] == 3  # kept until the parts are built
    b = run(m2, model2, opt2, 3, 3)
    assert torch.equal(a, b)
    for k, v in m.state_dict()["mixer"].items():
        assert torch.equal(v, m2.state_dict()["mixer"][k])
    for k, v in m.state_dict()["encoder"].items():
        assert torch.equal(v, m2.state_dict()["encoder"][k])
    m.save_mixer(tmp_path / "mixer.pt")
    saved = load_mixer(tmp_path / "mixer.pt")
    assert saved["channels"] == 6 and saved["stage"] == "layer2"
    assert all(torch.equal(v, m.mixer.state_dict()[k]) for k, v in saved["mixer"].items())


def test_call_margin_and_replay(tiny_net):
    m = Dummy(mode="elem", num_classes=5)
    x, y = data(b=32)
    out = m(x, y, model=tiny_net, generator=gen(3))
    lam = out.params.lam
    extreme = (lam <= 0.08) | (lam >= 0.92)
    mask = out.params.mask
    for b in range(32):
        if extreme[b]:
            assert torch.allclose(mask[b], torch.full_like(mask[b], float(lam[b])))
    torch.testing.assert_close(tiny_net(m.apply(x, out.params)), out.logits)
