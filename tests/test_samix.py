"""SAMix and SAMix^P: the Mixer, its losses, the saved-Mixer round trip and the frozen reuse."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, gen
from torch.func import functional_call

import mixkit
from mixkit.errors import HyperParameterError
from mixkit.learnable import load_mixer
from mixkit.methods.samix import (
    SAMix,
    SAMixMixer,
    SAMixP,
    eta_balanced_loss,
    lam_rescale,
    mask_prior_loss,
)


def ce(logits, target):
    return mixkit.mixup_cross_entropy(logits, target)


def mixer64(c=4, seed=0, **kw):
    torch.manual_seed(seed)
    mx = SAMixMixer(c, **kw).double()
    with torch.no_grad():  # larger weights than the 0.01 init, so every path matters
        for q in mx.parameters():
            q.copy_(torch.randn(q.shape, dtype=torch.float64, generator=gen(seed + q.numel())) * 0.5)
    return mx


def test_lam_rescale_fixed_points_and_bend():
    lam = torch.tensor([0.0, 0.5, 1.0, 0.2], dtype=torch.float64)
    out = lam_rescale(lam, 0.25)
    torch.testing.assert_close(out[:3], lam[:3])
    assert out[3] == pytest.approx(0.31, abs=0.01)  # bent towards 1/2
    assert torch.equal(lam_rescale(lam, -1), lam)


def reference_mixer(mx, z, index, lam, size):
    """An independent einsum re-implementation of algorithms.md 1.4 with the module's weights."""
    sd = {k: v for k, v in mx.state_dict().items()}
    b, c, h, w = z.shape
    k = mx.lam_mul_k
    rl = ((4 / 3) * lam**3 - 2 * lam**2 + (k + 1) * lam) / ((k + 1) - 2 / 3)
    zi, zj = z * (1 + rl).view(-1, 1, 1, 1), z[index] * (2 - rl).view(-1, 1, 1, 1)
    u = torch.cat([zi, zj], 1).flatten(2)  # (b, 2c, n)
    q = torch.einsum("oc,bcn->bon", sd["query.weight"][:, :, 0, 0], u) + sd["query.bias"].view(1, -1, 1)
    kk = torch.einsum("oc,bcn->bon", sd["key.weight"][:, :, 0, 0], u) + sd["key.bias"].view(1, -1, 1)
    att = torch.softmax(torch.einsum("bon,bom->bnm", q, kk) / math.sqrt(q.shape[1]), dim=-1)
    hid = torch.einsum("oc,bcn->bon", sd["value.0.weight"][:, :, 0, 0], zj.flatten(2))
    mu, var = hid.mean(dim=(0, 2), keepdim=True), hid.var(dim=(0, 2), unbiased=False, keepdim=True)
    hid = (hid - mu) / torch.sqrt(var + 1e-5) * sd["value.1.weight"].view(1, -1, 1) + sd["value.1.bias"].view(1, -1, 1)
    v = torch.einsum("oc,bcn->bon", sd["value.3.weight"][:, :, 0, 0], F.elu(hid))[:, 0]  # (b, n)
    m = torch.einsum("bnm,bm->bn", att, v).view(b, 1, h, w)
    up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return 1 - torch.sigmoid(up)


def test_mixer_matches_formula_and_shapes():
    mx = mixer64(c=4)
    z = torch.randn(3, 4, 2, 3, dtype=torch.float64, generator=gen(1))
    index, lam = torch.tensor([2, 0, 1]), torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    out = mx(z, index, lam, (8, 12))
    assert out.shape == (3, 1, 8, 12) and ((out > 0) & (out < 1)).all()
    torch.testing.assert_close(out, reference_mixer(mx, z, index, lam, (8, 12)))


def test_mixer_gradcheck():
    mx = mixer64(c=2, seed=3)
    z = torch.randn(2, 2, 2, 2, dtype=torch.float64, generator=gen(2), requires_grad=True)
    index, lam = torch.tensor([1, 0]), torch.tensor([0.3, 0.8], dtype=torch.float64)
    names = ["query.weight", "value.0.weight", "value.3.weight", "key.bias"]
    params = tuple(dict(mx.named_parameters())[n].detach().clone().requires_grad_(True) for n in names)

    def f(z, *ps):
        return functional_call(mx, dict(zip(names, ps)), (z, index, lam, (4, 4)))

    assert torch.autograd.gradcheck(f, (z, *params))


def test_eta_loss_reference_and_identity():
    g = gen(4)
    s = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    y, index = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([1, 2, 0, 4, 1])
    lam = torch.rand(5, dtype=torch.float64, generator=g)
    si, sj = s[torch.arange(5), y], s[torch.arange(5), y[index]]
    pbce = -(lam * (si - torch.logaddexp(si, sj)) + (1 - lam) * (sj - torch.logaddexp(si, sj)))
    pbce[4] = math.log(2)  # same class on both sides: the two-way softmax is 1/2
    mce = -(lam * s.log_softmax(1)[torch.arange(5), y] + (1 - lam) * s.log_softmax(1)[torch.arange(5), y[index]])
    torch.testing.assert_close(eta_balanced_loss(s, y, index, lam, eta=0.5), (pbce + 0.5 * mce).mean())
    torch.testing.assert_close(eta_balanced_loss(s, y, index, lam, eta=0.0), pbce.mean())
    soft = F.one_hot(y, 6).double()
    torch.testing.assert_close(eta_balanced_loss(s, soft, index, lam, eta=1.0), eta_balanced_loss(s, y, index, lam, eta=1.0))
    # derived identity (rows with two distinct classes): MCE = pBCE + log(Z / (e^si + e^sj))
    ratio = torch.logsumexp(s, 1) - torch.logaddexp(si, sj)
    torch.testing.assert_close(mce[:4], (pbce + ratio)[:4])
    assert torch.autograd.gradcheck(lambda t: eta_balanced_loss(t, y, index, lam, eta=0.5), (s,))


def test_mask_prior_matches_code_and_gradcheck():
    m = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=gen(5), requires_grad=True)
    lam = torch.full((3,), 0.8, dtype=torch.float64)
    mj = 1 - m
    mean_j = mj.sum() / (3 * 16)
    code = torch.clamp(torch.abs(1 - mean_j - 0.8) - 0.1, min=0) - 2 * torch.clamp(((mj - mean_j) ** 2).sum() / 48, min=0)
    torch.testing.assert_close(mask_prior_loss(m, lam, margin=0.1), code)
    assert mask_prior_loss(torch.full((2, 1, 2, 2), 0.75), torch.full((2,), 0.7)) == 0  # inside the margin, no variance
    assert torch.autograd.gradcheck(lambda t: mask_prior_loss(t, lam, margin=0.1), (m,))


def test_mask_weight_schedule_and_hparams():
    m = SAMix(mask_loss_schedule="cosine", total_steps=10)
    assert m.mask_weight == pytest.approx(0.1)
    m.step = 5
    assert m.mask_weight == pytest.approx(0.05)
    m.step = 10
    assert m.mask_weight == pytest.approx(0.0)
    assert SAMix().mask_weight == 0.1
    with pytest.raises(HyperParameterError):
        SAMix(upsampling="cubic")


def trained_samix(steps=2):
    torch.manual_seed(0)
    net, m = TinyNet(), SAMix(num_classes=5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for s in range(steps):
        x, y = torch.rand(6, 3, 8, 8, generator=gen(s)), torch.randint(0, 5, (6,), generator=gen(s))
        out = m.train_step(net, x, y, criterion=ce, generator=gen(50 + s))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return m, net


def test_saved_mixer_reloads_bit_identical(tmp_path):
    m, _ = trained_samix()
    path = tmp_path / "mixer.pt"
    m.save_mixer(path)
    torch.manual_seed(1)
    new = TinyNet()
    mp = mixkit.create("samix_p", mixer=str(path), num_classes=5)
    x, y = torch.rand(6, 3, 8, 8, generator=gen(9)), torch.randint(0, 5, (6,), generator=gen(9))
    out = mp(x, y, model=new, generator=gen(3))
    for k, v in m.mixer.state_dict().items():
        assert torch.equal(v, mp.mixer.state_dict()[k])
    for k, v in m.encoder.state_dict().items():
        assert torch.equal(v, mp.encoder.state_dict()[k])
    m.mixer.eval()
    m.encoder.eval()
    lam = out.params.lam
    ref = m.mixer(m.encoder.features(x), out.params.index, lam, (8, 8))
    linear = ((lam <= 0.08) | (lam >= 0.92)).view(-1, 1, 1, 1)
    assert torch.equal(torch.where(linear, lam.float().view(-1, 1, 1, 1).expand_as(ref), ref), out.params.mask)


def test_samix_p_trains_only_the_classifier(tmp_path):
    m, _ = trained_samix()
    m.save_mixer(tmp_path / "m.pt")
    mp = SAMixP(mixer=str(tmp_path / "m.pt"))
    net = TinyNet()
    x, y = torch.rand(6, 3, 8, 8, generator=gen(9)), torch.randint(0, 5, (6,), generator=gen(9))
    out = mp.train_step(net, x, y, criterion=ce, generator=gen(1))
    before = {k: v.clone() for k, v in mp.state_dict()["encoder"].items()}
    out.loss.backward()
    assert all(q.grad is not None for q in net.parameters())
    assert all(q.grad is None and not q.requires_grad for q in mp.mixer.parameters())
    assert mp.optimizer is None and mp.encoder.training is False
    mp.train_step(net, x, y, criterion=ce, generator=gen(2))
    assert all(torch.equal(v, mp.state_dict()["encoder"][k]) for k, v in before.items())  # frozen, no EMA
    with pytest.raises(HyperParameterError, match="does not fit"):
        SAMixP(mixer=str(tmp_path / "m.pt"))(x, y, model=TinyNet(num_classes=7))
    with pytest.raises(HyperParameterError, match="path"):
        SAMixP(mixer=str(tmp_path / "missing.pt"))


def test_samix_state_round_trip():
    m, net = trained_samix(steps=2)
    m2 = SAMix(num_classes=5)
    m2.load_state_dict(m.state_dict())
    x, y = torch.rand(6, 3, 8, 8, generator=gen(7)), torch.randint(0, 5, (6,), generator=gen(7))
    net2 = TinyNet()
    net2.load_state_dict(net.state_dict())
    a = m.train_step(net, x, y, criterion=ce, generator=gen(8))
    b = m2.train_step(net2, x, y, criterion=ce, generator=gen(8))
    assert torch.equal(a.loss, b.loss) and a.logs == b.logs
    for k, v in m.state_dict()["mixer"].items():
        assert torch.equal(v, m2.state_dict()["mixer"][k])


def test_engine_kill_and_resume_is_exact(tmp_path):
    import dataclasses
    from pathlib import Path

    from test_train import _strip_times, tiny_config, tiny_data, tiny_model

    from mixkit.train import train

    data = tiny_data()
    a = tiny_config(tmp_path / "a", method="samix", epochs=2, method_args={"total_steps": 6})
    full = train(a, data=data, model=tiny_model())
    b = dataclasses.replace(a, out=str(tmp_path / "b"))

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(b, data=data, model=tiny_model(), hooks={"batch_end": kill})
    resumed = train(b, resume=True, data=data, model=tiny_model())
    ca = torch.load(Path(a.out) / "checkpoint.pt", weights_only=False)
    cb = torch.load(Path(b.out) / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    for part in ("mixer", "encoder"):
        assert all(torch.equal(v, cb["method"][part][k]) for k, v in ca["method"][part].items())
    assert ca["method"]["step"] == cb["method"]["step"] == 6
    assert _strip_times(full["epochs"]) == _strip_times(resumed["epochs"])


@pytest.mark.parametrize("name", ["samix", "samix_p"])
def test_integer_input_refused(name):
    x, y = (torch.rand(4, 3, 8, 8) * 255).to(torch.uint8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(mixkit.DTypeError, match="floating point"):
        mixkit.create(name)(x, y, model=TinyNet())
    with pytest.raises(mixkit.DTypeError, match="floating point"):
        mixkit.create(name).train_step(TinyNet(), x, y, criterion=ce)


def test_mask_snapshots_recorded_without_changing_training(tmp_path):
    from mixkit.mask_snapshots import snapshot_epoch

    assert [e for e in range(1, 120) if snapshot_epoch(e)] == [1, 2, 5, 10, 20, 50, 100]

    def run(record):
        torch.manual_seed(0)
        net = TinyNet()
        m = SAMix(num_classes=5, total_steps=8)
        m.set_input_normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        g, logs = gen(4), []
        for epoch in range(4):
            for _ in range(2):
                x, y = torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)
                out = m.train_step(net, x, y, criterion=ce, generator=g)
                opt.zero_grad()
                out.loss.backward()
                opt.step()
            if record:
                logs.append(m.epoch_end(net))
        return m, net, logs

    m, net, logs = run(True)
    plain, plain_net, _ = run(False)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain_net.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(m.mixer.state_dict().values(), plain.mixer.state_dict().values()))
    snaps = m.snapshots
    assert [r["epoch"] for r in snaps.records] == [1, 2, 4]  # 1, 2 and the last epoch (step 8 = total_steps)
    assert [bool(entry) for entry in logs] == [True, True, False, True]
    assert snaps.probe.shape == (6, 3, 8, 8) and snaps.records[0]["masks"].shape == (3, 3, 8, 8)
    assert snaps.records[0]["masks"].dtype == torch.uint8
    # the recorded masks are the Mixer's, in eval mode, for pair (i, n + i) at each lambda
    m.mixer.eval(), m.encoder.eval()
    x = snaps.probe.float()
    index = torch.tensor([3, 4, 5, 0, 1, 2])
    for k, lam in enumerate(snaps.lams):
        ref = m.mixer(m.encoder.features(x), index, torch.full((6,), lam, dtype=torch.float64), (8, 8))[:3, 0]
        assert torch.allclose(snaps.records[-1]["masks"][:, k].float() / 255, ref.detach(), atol=1 / 255)
    assert torch.allclose(snaps.pixels(), x * 0.25 + 0.5)
    # kept in the state and in the saved Mixer
    m2 = SAMix(num_classes=5)
    m2.load_state_dict(m.state_dict())
    m2._build(TinyNet(), x, gen(0))
    assert len(m2.snapshots.records) == 3 and torch.equal(m2.snapshots.probe, snaps.probe)
    m.save_mixer(tmp_path / "mixer.pt")
    assert len(load_mixer(str(tmp_path / "mixer.pt"))["snapshots"]["records"]) == 3


def test_show_checkpoint_draws_the_snapshots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mixkit.cli import main

    m, _ = trained_samix(steps=2)
    assert m.epoch_end(TinyNet())["mask_mean_gap"] >= 0
    m.save_mixer(tmp_path / "mixer.pt")
    out = tmp_path / "show.png"
    assert main(["show", "--method", "samix", "--checkpoint", str(tmp_path / "mixer.pt"), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    with pytest.raises(SystemExit, match="not 'automix'"):
        main(["show", "--method", "automix", "--checkpoint", str(tmp_path / "mixer.pt"), "--out", str(out)])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        main(["show", "--method", "samix", "--checkpoint", str(tmp_path / "nope.pt")])


FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.skipif(not __import__("os").path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
def test_cli_save_mixer_then_samix_p_with_mixer_flag_then_show(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mixkit import cli

    common = ["--data", "fashion_mnist", "--model", "resnet20", "--epochs", "1", "--subset", "2", "--batch-size", "10",
              "--no-corruptions", "--cache-dir", str(tmp_path / "c")]
    mixer = tmp_path / "mixer.pt"
    assert cli.main(["train", "--method", "samix", "--out", str(tmp_path / "a"), "--save-mixer", str(mixer), *common]) == 0
    assert load_mixer(str(mixer))["method"] == "samix"
    assert cli.main(["train", "--method", "samix_p", "--mixer", str(mixer), "--out", str(tmp_path / "b"),
                     "--subset-offset", "2", *common]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["method_args"] == {"mixer": str(mixer)} and config["subset_offset"] == 2
    picture = tmp_path / "masks.png"
    assert cli.main(["show", "--method", "samix", "--checkpoint", str(tmp_path / "a" / "checkpoint.pt"),
                     "--out", str(picture)]) == 0
    assert picture.stat().st_size > 5000




class _SmallNet(torch.nn.Module):
    """A small BN CNN with a ``layer3`` stage (7x7 at 28x28 input), for a fast real-data run."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn

        def block(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, stride=s), nn.BatchNorm2d(o), nn.ReLU())

        self.stem, self.layer1, self.layer2, self.layer3 = block(1, 16, 1), block(16, 32, 2), block(32, 32, 2), block(32, 64, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


@pytest.mark.skipif(not __import__("os").path.exists(FASHION), reason="Fashion-MNIST not installed (make data)")
def test_mask_mean_tracks_lambda_after_short_real_training(tmp_path):
    """After 100 steps on Fashion-MNIST the Mixer's mask mean rises with lambda (it starts flat).

    Per-sample lambdas (``mode="elem"``): with one lambda per batch (the papers' default) the
    Mixer's lambda encoding scales the features by the same factor in every row, and the
    BatchNorm of its value network removes that factor in training, so the lambda dependence
    has to come from the attention alone and takes far longer to appear (measured: mask means
    0.50-0.57 over lambda 0.1-0.9 after 150 such steps). The EMA momentum is lowered so that
    the frozen encoder follows the classifier within these few steps.
    """
    from mixkit.data import load_dataset

    d = load_dataset("fashion_mnist", split="train", cache_dir=tmp_path)
    x_all, y_all = (d.images[:4096].float() / 255.0 - 0.286) / 0.353, d.labels[:4096]
    torch.manual_seed(0)
    net = _SmallNet()
    m = SAMix(num_classes=10, total_steps=100, momentum=0.9, momentum_end=0.99, mode="elem")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = gen(0)
    probe, index = x_all[:64], torch.arange(64).roll(1)

    def mask_means():
        m.mixer.eval(), m.encoder.eval()
        with torch.no_grad():
            feats = m._features(probe)
            return torch.tensor([float(m.generate_mask(feats, index, torch.full((64,), lam, dtype=torch.float64),
                                                       size=(28, 28)).mean()) for lam in (0.1, 0.3, 0.5, 0.7, 0.9)])

    for step in range(100):
        idx = torch.randint(0, 4096, (64,), generator=g)
        out = m.train_step(net, x_all[idx], y_all[idx], criterion=mixkit.mixup_cross_entropy, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step == 0:
            start = mask_means()
    end = mask_means()
    assert (start[-1] - start[0]).abs() < 0.05  # untrained: flat in lambda
    assert bool((end.diff() > 0).all()) and end[-1] - end[0] > 0.15  # trained: rising with lambda
