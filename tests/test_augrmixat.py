"""AugRmixAT: the adversarial view, the shared random mix and the summed training loss."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

import mixkit
from conftest import TinyNet, gen
from mixkit.functional.augment_ops import apply_chains
from mixkit.methods.augrmixat import AugRmixAT, pgd_perturb
from mixkit.types import MixTarget

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def stats():
    return torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, x):
        return self.body(x)


def batch(b=8, size=12, seed=0):
    y = torch.arange(b) % 5
    return torch.rand(b, 3, size, size, generator=gen(seed)), y


def test_defaults_are_randommix_set_and_paper_like_attack():
    m = AugRmixAT()
    assert m.methods == ("mixup", "cutmix", "resizemix", "fmix") and m.methods == mixkit.create("randommix").methods
    assert (m.epsilon, m.step_size, m.steps, m.random_start) == (8 / 255, 2 / 255, 7, True)
    assert mixkit.method_info("augrmixat").family == "random"
    with pytest.raises(mixkit.HyperParameterError):
        AugRmixAT(steps=0)


def test_pgd_stays_in_the_pixel_ball_and_raises_the_loss():
    torch.manual_seed(0)
    model = TinyNet(3, 5).eval()
    x, y = batch()
    mean, std = stats()
    pixels = x

    def loss_fn(logits):
        return nn.functional.cross_entropy(logits, y)

    def to_input(p):
        return (p - mean) / std

    adv = pgd_perturb(model, pixels, loss_fn, to_input=to_input, epsilon=0.03, step_size=0.01, steps=5,
                      generator=gen(1))
    assert float((adv - pixels).abs().max()) <= 0.03 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean = loss_fn(model(to_input(pixels)))
        attacked = loss_fn(model(to_input(adv)))
        noise = (pixels + 0.03 * torch.sign(torch.randn(pixels.shape, generator=gen(2)))).clamp(0, 1)
        noisy = loss_fn(model(to_input(noise)))
    assert float(attacked) > float(clean) and float(attacked) > float(noisy)


def test_fgsm_setting_moves_every_free_pixel_by_epsilon():
    torch.manual_seed(0)
    model = TinyNet(3, 5).double()
    x = torch.rand(4, 3, 8, 8, generator=gen(3), dtype=torch.float64) * 0.8 + 0.1
    y = torch.arange(4)
    adv = pgd_perturb(model, x, lambda z: nn.functional.cross_entropy(z, y), epsilon=0.05, step_size=0.05,
                      steps=1, random_start=False)
    step = (adv - x).abs()
    moved = step > 0  # pixels with a zero gradient stay
    assert moved.double().mean() > 0.9
    torch.testing.assert_close(step[moved], torch.full_like(step[moved], 0.05))


def test_perturb_leaves_no_gradients_and_restores_each_module_mode():
    torch.manual_seed(0)
    model = BNNet()
    model.train()
    model.body[1].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    running = model.body[1].running_mean.clone()
    m = AugRmixAT(num_classes=5)
    m.set_input_normalization(MEAN, STD)
    x, y = batch()
    mean, std = stats()
    xn = (x - mean) / std
    x_hat = m.perturb(model, xn, y, criterion=mixkit.mixup_cross_entropy, generator=gen(4))
    assert all(p.grad is None for p in model.parameters())
    assert [mm.training for mm in model.modules()] == modes
    assert torch.equal(model.body[1].running_mean, running)
    delta_pixels = (x_hat - xn) * std
    assert float(delta_pixels.abs().max()) <= 8 / 255 + 1e-5 and not torch.equal(x_hat, xn)
    model.body[1].train()
    out = m.train_step(model, xn, y, criterion=mixkit.mixup_cross_entropy, generator=gen(5))
    assert all(p.grad is None for p in model.parameters()) and model.training
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_step_sums_the_three_views_losses_under_one_mix():
    torch.manual_seed(0)
    model = TinyNet(3, 5)
    x, y = batch(seed=6)
    m = AugRmixAT(num_classes=5, steps=2)
    out = m.train_step(model, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(7))
    g = gen(7)  # replay the draws in the same order: mix params, then the attack's random start
    params = m.sample(x, y, generator=g)
    x_hat = m.perturb(model, x, y, criterion=mixkit.mixup_cross_entropy, generator=g)
    target = m.target(y, params)
    views = (x, m._augmix.apply(x, params.augmix), x_hat)
    with torch.no_grad():
        losses = [mixkit.mixup_cross_entropy(model(m._mixer.apply(v, params.mix)), target) for v in views]
    torch.testing.assert_close(out.loss.detach(), sum(losses))
    torch.testing.assert_close(out.target.weight, target.weight)
    assert set(out.logs) == {"loss_clean", "loss_augmix", "loss_adv"} and out.logits.shape == (8, 5)
    with_jsd = AugRmixAT(num_classes=5, steps=1, jsd_weight=12.0).train_step(
        model, x, y, criterion=mixkit.mixup_cross_entropy, generator=gen(8))
    assert with_jsd.logs["jsd"] >= 0


def test_call_is_the_drawn_mix_of_the_augmix_images():
    x, y = batch(b=10, seed=9)
    m = AugRmixAT(methods=("mixup",), num_classes=5)
    out = m(x, y, generator=gen(10))
    a = apply_chains(x, out.params.augmix.chains)
    lam = out.params.lam.float().view(-1, 1, 1, 1)
    torch.testing.assert_close(out.x, lam * a + (1 - lam) * a[out.params.index])
    half = AugRmixAT(p=0.5, mode="elem", num_classes=5)(x, y, generator=gen(11))
    off = ~half.params.augmix.active
    assert 0 < int(off.sum()) < 10
    assert torch.equal(half.x[off], x[off]) and (half.target.weight[off, 0] == 1).all()


def test_methods_are_drawn_uniformly_per_batch():
    m = AugRmixAT(num_classes=5)
    x, y = batch(b=4, size=8)
    g = gen(12)
    choices = torch.stack([m.sample(x, y, generator=g).mix.choice for _ in range(400)])
    assert (choices == choices[:, :1]).all()  # one method per batch
    rates = torch.bincount(choices[:, 0], minlength=4).double() / 400
    torch.testing.assert_close(rates, torch.full((4,), 0.25, dtype=torch.float64), atol=0.07, rtol=0)


def test_normalisation_reaches_the_inner_augmix_and_survives_pickling():
    m = AugRmixAT(num_classes=5)
    m.set_input_normalization(MEAN, STD)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2._augmix.input_normalization == (MEAN, STD) == m2.input_normalization
    x, y = batch()
    mean, std = stats()
    params = m2.sample(x, y, generator=gen(13))
    plain = AugRmixAT(num_classes=5)
    torch.testing.assert_close(m2.apply((x - mean) / std, params) * std + mean, plain.apply(x, params),
                               atol=1e-5, rtol=1e-5)
    assert isinstance(m2.target(y, params), MixTarget)


def test_elem_with_p_below_one_draws_fmix_noise_only_for_active_rows(monkeypatch):
    import mixkit.methods.cutting as cutting

    drawn = []
    noise = cutting.fourier_noise
    monkeypatch.setattr(cutting, "fourier_noise", lambda n, *a, **k: drawn.append(n) or noise(n, *a, **k))
    m = mixkit.create("augrmixat", mode="elem", p=0.5, num_classes=4)
    x, y = torch.rand(40, 3, 16, 16, generator=gen(0)), torch.arange(40) % 4
    params = m.sample(x, y, generator=gen(5))
    k = list(m.methods).index("fmix")
    fmix_rows = params.mix.choice == k
    assert bool((~params.augmix.active[fmix_rows]).sum() == 0)  # every FMix row is an active one
    assert drawn == ([int(fmix_rows.sum())] if bool(fmix_rows.any()) else [])
    assert 0 < int(params.augmix.active.sum()) < 40
