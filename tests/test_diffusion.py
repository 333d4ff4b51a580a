"""Diffusion pieces: schedules, respacing, samplers, DDPM method."""

import pytest
import torch

from ebm_nb.diffusion import (
    DDPM,
    DDPMConfig,
    Schedule,
    SmallUNet,
    TimeMLP,
    ddpm_sample,
    ddpm_sampler,
    karras_sigmas,
    linear_betas,
    respace,
    rollout,
    scratch_sampler,
    var_betas,
)


def test_var_schedule_matches_spec():
    b = var_betas(10)
    assert torch.allclose(b[:4], torch.tensor([1e-4, 0.011025, 0.04, 0.087025], dtype=torch.float64), atol=1e-6)
    assert abs(torch.prod(1 - b).item() - 0.0208) < 5e-4


def test_karras_and_linear():
    s = karras_sigmas(10)
    assert abs(s[0].item() - 80) < 1e-9 and abs(s[-1].item() - 0.002) < 1e-9 and (s[:-1] > s[1:]).all()
    assert linear_betas(1000)[0].item() == pytest.approx(1e-4)


def test_bad_steps():
    with pytest.raises(ValueError):
        respace(Schedule.linear(), 0)
    with pytest.raises(ValueError):
        var_betas(0)
    with pytest.raises(ValueError, match="exceeds the 1000 steps"):
        respace(Schedule.linear(), 2000)


def test_respaced_sampler_is_ancestral_ddpm():
    rl = respace(Schedule.linear(), 5).rl()
    assert rl.T == 5 and (rl.time[:-1] > rl.time[1:]).all()  # RL order: noisiest first
    s = ddpm_sampler(TimeMLP(2, 2, 8, 1), (2,), 5)
    assert s.T == 5 and s.fix_last and abs(s.sigma()[-1].item() - 1e-3) < 1e-6


def test_sampling_is_seeded():
    net = TimeMLP(2, 2, 8, 1)
    a = ddpm_sample(net, (2,), 16, 10, generator=torch.Generator().manual_seed(0))
    b = ddpm_sample(net, (2,), 16, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (16, 2)
    xs = rollout(scratch_sampler(2, 3), 4, torch.Generator().manual_seed(0))
    assert len(xs) == 4 and all(x.shape == (4, 2) for x in xs)


def test_unet_and_ddpm_images():
    unet = SmallUNet(1, 28, 8)
    assert unet(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="needs x of shape"):
        unet(torch.randn(2, 1, 32, 32), 0)
    m = DDPM(DDPMConfig(hidden=8, iters=1, batch_size=2), (1, 28, 28), device="cpu")
    loss = m.step(torch.rand(2, 1, 28, 28))["loss"]  # logged values stay on the device: 0-dim tensors
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad and torch.isfinite(loss)
    x = m.sample(2, steps=3)
    assert x.shape == (2, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    with pytest.raises(NotImplementedError, match="no energy"):
        m.energy(x)


def test_rollout_calls_back_as_every_chain():
    "callback(i, x_i, energy) for i = 0..T with energy None: the chain API's one signature."
    seen = []
    xs = rollout(scratch_sampler(2, 3), 4, torch.Generator().manual_seed(0), callback=lambda *a: seen.append(a))
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and all(e is None for _, _, e in seen)
    assert all(torch.equal(x, y) for (_, x, _), y in zip(seen, xs))
    with pytest.raises(TypeError, match="callback must be callable"):
        rollout(scratch_sampler(2, 3), 4, callback=0)
