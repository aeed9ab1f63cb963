"""AutoMix: the MixBlock against the published formula, its loss, and the momentum pipeline."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, gen

import mixkit
from mixkit.learnable import load_mixer
from mixkit.losses import mixup_cross_entropy
from mixkit.methods.automix import AutoMix, MixBlock, mask_mean_loss


def reference_mask(block: MixBlock, z, lam, index, size):
    """The MixBlock's formula written out per pixel pair (independent of the module's code)."""
    b, c, h, w = z.shape
    wq, bq = block.query.weight.view(block.inter_channels, -1), block.query.bias
    wv, bv = block.value.weight.view(1, -1), block.value.bias
    out = torch.empty(b, 1, h, w, dtype=z.dtype)
    for i in range(b):
        zi = torch.cat([z[i], torch.full((1, h, w), float(lam[i]), dtype=z.dtype)]).view(c + 1, -1)
        zj = torch.cat([z[index[i]], torch.full((1, h, w), 1 - float(lam[i]), dtype=z.dtype)]).view(c + 1, -1)
        q, k = wq @ zi + bq[:, None], wq @ zj + bq[:, None]  # (d, hw)
        v = (wv @ zi + bv[:, None])[0]  # (hw,)
        pmat = torch.softmax(q.T @ k / math.sqrt(block.inter_channels), dim=1)  # rows: positions of i
        out[i, 0] = (pmat.T @ v).view(h, w)
    return torch.sigmoid(F.interpolate(out, size=size, mode="nearest"))


def test_mixblock_matches_the_formula():
    block = MixBlock(6, generator=gen(0)).double()
    with torch.no_grad():
        for prm in block.parameters():
            prm.normal_(0, 0.5, generator=gen(1))
    z = torch.randn(3, 6, 2, 3, generator=gen(2), dtype=torch.float64)
    lam, index = torch.tensor([0.2, 0.7, 0.5], dtype=torch.float64), torch.tensor([2, 0, 1])
    got = block(z, lam, index, (4, 6))
    torch.testing.assert_close(got, reference_mask(block, z, lam, index, (4, 6)))
    # nearest upsampling: each feature cell becomes a constant 2 x 2 block
    assert torch.equal(got[:, :, ::2, ::2], got[:, :, 1::2, 1::2])


def test_mixblock_uses_lambda_and_its_init():
    block = MixBlock(4, generator=gen(0))
    assert block.query.weight.std() < 0.05 and block.query.bias.abs().sum() == 0
    assert torch.equal(MixBlock(4, generator=gen(0)).query.weight, block.query.weight)
    with torch.no_grad():
        block.value.weight.normal_(0, 1.0, generator=gen(3))
    z, index = torch.randn(2, 4, 2, 2, generator=gen(1)), torch.tensor([1, 0])
    a = block(z, torch.full((2,), 0.1), index, (4, 4))
    b = block(z, torch.full((2,), 0.9), index, (4, 4))
    assert not torch.allclose(a, b)
    assert MixBlock(4, lam_concat=False).query.in_channels == 4


def test_mixblock_gradcheck():
    block = MixBlock(4, upsample="bilinear", generator=gen(0)).double()
    with torch.no_grad():
        for prm in block.parameters():
            prm.normal_(0, 0.3, generator=gen(1))
    lam, index = torch.tensor([0.3, 0.6], dtype=torch.float64), torch.tensor([1, 0])
    z = torch.randn(2, 4, 2, 2, generator=gen(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block(t, lam, index, (4, 4)), (z,))
    names = [n for n, _ in block.named_parameters()]
    prms = tuple(p.detach().clone().requires_grad_(True) for p in block.parameters())

    def by_params(*ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (z.detach(), lam, index, (4, 4)))

    assert torch.autograd.gradcheck(by_params, prms)


def test_mask_mean_loss_value_and_gradcheck():
    mask = torch.full((2, 1, 3, 3), 0.5, dtype=torch.float64)
    assert float(mask_mean_loss(mask, torch.tensor([0.5, 0.5]), 0.1)) == 0.0
    assert float(mask_mean_loss(mask, torch.tensor([0.9, 0.9]), 0.1)) == pytest.approx(0.3)
    m = torch.rand(2, 1, 3, 3, generator=gen(0), dtype=torch.float64).requires_grad_(True)
    lam = torch.tensor([0.95, 0.95], dtype=torch.float64)  # away from the hinge's kink
    assert torch.autograd.gradcheck(lambda t: mask_mean_loss(t, lam, 0.1), (m,))


def make_step(method, model, seed, b=6, size=8):
    g = gen(seed)
    x, y = torch.rand(b, 3, size, size, generator=g), torch.randint(0, 5, (b,), generator=g)
    return method.train_step(model, x, y, criterion=mixup_cross_entropy, generator=gen(seed + 100))


def test_no_gradient_crosses_between_mixer_and_classifier():
    torch.manual_seed(0)
    model, method = TinyNet(), AutoMix(lam_margin=0.0)
    out = make_step(method, model, 0)
    # the Mixer stepped on its own loss: the model's parameters got no gradient from it
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in method.mixer.parameters())
    assert not any(p.requires_grad for p in method.encoder.parameters())
    # the classifier's loss does not reach the Mixer
    grads = torch.autograd.grad(out.loss, list(method.mixer.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in method.encoder.parameters())


def test_state_round_trip_is_exact():
    torch.manual_seed(0)
    model, method = TinyNet(), AutoMix()
    for seed in range(2):
        make_step(method, model, seed)
    state, model2 = copy.deepcopy(method.state_dict()), copy.deepcopy(model)
    resumed = AutoMix()
    resumed.load_state_dict(state)  # before the first step: applied when the parts are built
    a, b = make_step(method, model, 5), make_step(resumed, model2, 5)
    assert torch.equal(a.loss, b.loss) and a.logs == b.logs
    for pa, pb in zip(method.mixer.parameters(), resumed.mixer.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = method.state_dict(), resumed.state_dict()
    assert sa["step"] == sb["step"] == 3
    assert all(torch.equal(v, sb["encoder"][k]) for k, v in sa["encoder"].items())


def test_saved_mixer_reloads_bit_identical(tmp_path):
    torch.manual_seed(0)
    model, method = TinyNet(), AutoMix()
    make_step(method, model, 0)
    method.save_mixer(str(tmp_path / "mixer.pt"))
    data = load_mixer(str(tmp_path / "mixer.pt"))
    block = MixBlock(data["channels"], **data["config"])
    block.load_state_dict(data["mixer"])
    for k, v in method.mixer.state_dict().items():
        assert torch.equal(v, block.state_dict()[k])
    z, lam, index = torch.randn(3, data["channels"], 2, 2), torch.rand(3), torch.tensor([2, 0, 1])
    assert torch.equal(method.mixer(z, lam, index, (8, 8)), block(z, lam, index, (8, 8)))


def test_lambda_margin_gives_plain_mixup():
    torch.manual_seed(0)
    model, method = TinyNet(), AutoMix(lam_margin=0.5)
    x, y = torch.rand(4, 3, 8, 8, generator=gen(0)), torch.tensor([0, 1, 2, 3])
    out = method(x, y, model=model, generator=gen(1))
    lam = out.params.lam.float().view(-1, 1, 1, 1)
    mixed = method.apply(x, out.params)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[out.params.index])
    torch.testing.assert_close(out.target.soft(5).sum(dim=1), torch.ones(4))


def test_mask_mean_follows_lambda_when_trained():
    """The mask prior alone (CE off by a zero-logit teacher) drives mean(M) into lam +- margin."""
    torch.manual_seed(0)
    model = TinyNet()
    method = AutoMix(mask_weight=1.0, mask_weight_end=1.0, mask_margin=0.02, mixer_lr=1.0, alpha=1.0, mode="elem")
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
    for seed in range(60):
        make_step(method, model, seed)
    x = torch.rand(8, 3, 8, 8, generator=gen(7))
    with torch.no_grad():
        z = method.encoder.features(x)
        for lam in (0.3, 0.7):
            mask = method.mixer(z, torch.full((8,), lam), torch.arange(8).roll(1), (8, 8))
            assert abs(float(mask.mean()) - lam) < 0.1


def test_registry_metadata():
    info = mixkit.method_info("automix")
    assert info.family == "learnable" and info.sources == 2 and set(info.needs) == {"model", "mixer"}
    assert info.defaults["alpha"] == 2.0 and info.defaults["lam_margin"] == 0.08


@pytest.mark.parametrize("name", ["automix", "adautomix"])
def test_integer_images_are_refused(name):
    x, y = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8), torch.tensor([0, 1])
    with pytest.raises(mixkit.DTypeError, match="floating point"):
        mixkit.create(name)(x, y, model=TinyNet())


def engine_resume_matches(name: str, tmp_path) -> None:
    """A run killed in its 2nd epoch and resumed by the engine ends bit-identical to an uninterrupted one."""
    from mixkit.train import TrainConfig, TrainData, train

    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 4
    x = (torch.rand(32, 3, 8, 8, generator=g) * 128 + y.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    data = TrainData(x, y, x[:16], y[:16], ("a", "b", "c", "d"), (0.5,) * 3, (0.25,) * 3)

    def run(out, **kw):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, corruptions=False, out=str(out), median_last=1,
                          eval_batch_size=16, threads=1, method=name, method_args={"mode": "elem"})
        return train(cfg, data=data, model=TinyNet(3, 4), **kw)

    def kill(epoch, step):
        if epoch == 1 and step == 0:
            raise KeyboardInterrupt

    full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", hooks={"batch_end": kill})
    resumed = run(tmp_path / "b", resume=True)
    ca, cb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("a", "b"))
    assert all(torch.equal(v, cb["model"][k]) for k, v in ca["model"].items())
    for part in ("mixer", "encoder"):
        assert all(torch.equal(v, cb["method"][part][k]) for k, v in ca["method"][part].items())
    assert ca["method"]["step"] == cb["method"]["step"] == 4 and full["final"] == resumed["final"]


def test_engine_kill_and_resume_is_exact(tmp_path):
    engine_resume_matches("automix", tmp_path)
