"""GCD/DxMI: bad input, one iteration's bookkeeping, divergence guard, exact resume."""

import inspect
import math

import pytest
import torch

from ebm_nb.presets import get_preset
from ebm_nb.checkpoints import load_checkpoint
from ebm_nb.data import sample_toy
from ebm_nb.diffusion import TimeMLP, ddpm_sampler, scratch_sampler
from ebm_nb.gcd import GCD, GCDConfig, anomaly_class, image_variant, table1_job, time_cost
from ebm_nb.training import TrainingDiverged, train


def small(**kw):
    return get_preset("gcd", "smoke", "toy2d", hidden=16, depth=2, batch_size=32, **kw)


def test_bad_config():
    with pytest.raises(ValueError, match="T must be a positive"):
        GCDConfig(T=0)
    with pytest.raises(ValueError, match="tau2 must be a non-negative"):
        GCDConfig(tau2=-1)
    with pytest.raises(ValueError, match="Unknown time_cost 'cosine'"):
        GCDConfig(time_cost="cosine")
    with pytest.raises(ValueError, match="avr_decay must be in"):
        GCDConfig(avr_decay=1.0)


def test_dimension_and_step_mismatch():
    with pytest.raises(ValueError, match="has 5 steps but cfg.T = 3"):
        GCD(small(T=3), (2,), sampler=scratch_sampler(2, 5), device="cpu")
    with pytest.raises(ValueError, match=r"samples of shape \(3,\)"):
        GCD(small(), (2,), sampler=scratch_sampler(3, 5), device="cpu")
    with pytest.raises(ValueError, match="need a sampler built with ddpm_sampler"):
        GCD(small(), (1, 8, 8), device="cpu")


def test_incompatible_pretrained_net():
    eps = TimeMLP(3, 3, 8, 1)  # a net for 3-d data used on 2-d samples
    m = GCD(small(), (2,), sampler=ddpm_sampler(eps, (2,), 5), device="cpu")
    with pytest.raises(ValueError, match=r"TimeMLP\(dim=3\) needs x of shape"):
        m.step(torch.randn(32, 2))


def test_step_logs_and_avr():
    m = GCD(small(), (2,), device="cpu")
    logs = m.step(sample_toy("8gaussians", 32))
    assert {"energy_pos", "energy_neg", "loss_td", "loss_sampler"} <= set(logs) and all(
        math.isfinite(v) for v in logs.values()
    )
    assert m.s2.shape == (5,) and (m.s2 > 0).all()
    assert m.sample(7).shape == (7, 2) and m.sample(7, guidance=0.5).shape == (7, 2)


def test_time_cost_shapes():
    assert torch.allclose(time_cost("linear", torch.arange(4), 4), torch.full((4,), 0.05))
    s = time_cost("sigmoid", torch.arange(10), 10)
    assert (s[:5] >= s[5:].flip(0) - 1e-6).all() or s.argmax() == 4


def test_divergence_stops_with_guard(tmp_path):
    m = GCD(small(lr_value=10.0), (2,), device="cpu")  # a value learning rate that blows the energy up
    with pytest.raises(TrainingDiverged, match=r"Training diverged at iteration \d+: .*energy") as err:
        train(m, sample_toy("8gaussians", 200), 50, 32, ckpt_path=tmp_path / "ck.pt", ckpt_every=1)
    ck = load_checkpoint(tmp_path / "ck.pt", restore_rng=False)
    assert f"iteration {ck['iteration']}" in str(err.value)  # the message names the last good checkpoint


def test_resume_is_exact(tmp_path):
    data = sample_toy("8gaussians", 300, generator=torch.Generator().manual_seed(0))

    def run(iters, path, resume=True):
        torch.manual_seed(3)
        g = torch.Generator().manual_seed(1)
        m = GCD(small(), (2,), device="cpu", generator=torch.Generator().manual_seed(2))
        return m, train(m, data, iters, 32, generator=g, ckpt_path=path, ckpt_every=3, resume=resume)

    full, _ = run(6, tmp_path / "a.pt")
    run(3, tmp_path / "b.pt")
    resumed, _ = run(6, tmp_path / "b.pt")
    for a, b in zip(full.value_net.parameters(), resumed.value_net.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(full.sampler.log_sigma, resumed.sampler.log_sigma) and torch.equal(full.s2, resumed.s2)


def test_no_time_cost_and_energy_value_on_images():
    t = torch.arange(10)
    assert time_cost("zero", t, 10).eq(0).all()
    from ebm_nb.diffusion import SmallUNet

    cfg = get_preset("gcd", "smoke", "fmnist", T=3, time_cost="zero", fast=True)  # fast is ignored on a CPU
    m = GCD(cfg, (1, 28, 28), sampler=ddpm_sampler(SmallUNet(1, 28, 8), (1, 28, 28), 3), device="cpu")
    assert not m.fast
    x = torch.rand(4, 1, 28, 28)
    # the energy net (ConvEnergy) sees [0, 1] images whether called on data or on model-space states
    assert torch.allclose(m.energy(x), m.value_net(x)) and torch.allclose(m.value(x * 2 - 1, 0), m.value_net(x))
    logs = m.step(x)
    assert all(math.isfinite(v) for v in logs.values())


def test_image_and_anomaly_presets_follow_the_paper():
    img = get_preset("gcd", "paper", "fmnist")
    assert (img.T, img.tau1, img.tau2, img.value, img.time_cost, img.sampler_grad_clip) == (
        10,
        0.1,
        0.01,
        "energy",
        "sigmoid",
        0.1,
    )
    assert (img.lr_sampler, img.lr_value, img.lr_sigma, img.batch_size) == (1e-7, 1e-5, 1e-5, 128)
    for scale in ("smoke", "quick", "gpu", "paper"):
        c = get_preset("gcd", scale, "fmnist")
        assert c.lr_value > c.lr_sampler and math.isclose(c.lr_sigma, 100 * c.lr_sampler), (
            scale
        )  # DxMI App. B's two rules
    assert get_preset("gcd", "quick", "fmnist_anomaly").tau1 == 0.1


@pytest.mark.parametrize("job", [table1_job, image_variant, anomaly_class])
def test_jobs_have_the_protocol_shape(job):
    "fn(row, seed, *, device, **shared): what protocol.run_protocol calls."
    ps = list(inspect.signature(job).parameters.values())
    assert [p.name for p in ps[:2]] == ["row", "seed"] and ps[2].name == "device"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ps[2:])


def test_eval_presets_for_every_scale():
    for scale in ("smoke", "quick", "gpu", "paper"):
        toy = get_preset("gcd_eval", scale, "toy2d")
        assert toy.n_train and toy.n_eval and toy.n_samplings >= 2
        for data in ("fmnist", "cifar10"):
            assert get_preset("gcd_eval", scale, data).ddpm_steps >= 10
    assert get_preset("gcd_eval", "paper", "cifar10").n_eval == 50000  # the paper's FID sample count
