"""Improved CD: bad input (one sentence each), the divergence guard, the KL term's path to the parameters (last Langevin
step only, frozen energy), the CD/KL gradient split, and bit-exact resume through `train(ckpt_path=...)`."""

import pytest
import torch

from ebm_nb.presets import get_preset
from ebm_nb.checkpoints import load_checkpoint
from ebm_nb.improved_cd import ImprovedCD, ablate, fit
from ebm_nb.sampling import frozen, langevin
from ebm_nb.training import TrainingDiverged
from helpers import torchrun

SHAPE = (1, 16, 16)
DATA = torch.rand(256, *SHAPE, generator=torch.Generator().manual_seed(0))


def small(**kw):
    base = dict(iters=8, batch_size=8, steps=3, buffer_size=32, entropy_min_buffer=8, entropy_refs=8, step_size=10.0)
    return get_preset("improved_cd", "smoke", "fmnist", **{**base, **kw})


def method(cfg=None, seed=0):
    torch.manual_seed(seed)  # the nets' initial weights come from the global stream
    return ImprovedCD(cfg or small(), SHAPE, device="cpu", generator=torch.Generator().manual_seed(seed))


def test_bad_input_one_sentence_each():
    m = method()
    with pytest.raises(ValueError, match=r"needs x of shape \(N, 1, 16, 16\), got \(2, 1, 28, 28\)"):
        m.energy(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="buffer_size=4 is smaller than batch_size=8"):
        small(buffer_size=4)
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=f"step_size must be a positive number, got {bad}"):
            small(step_size=bad)
    with pytest.raises(ValueError, match="Unknown ablation 'no_attention'; valid values are: full, no_kl"):
        ablate(small(), "no_attention")
    with pytest.raises(ValueError, match="entropy=True needs kl=True and buffer=True"):
        small(buffer=False)
    m.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1))  # an energy returning (N, 1)
    with pytest.raises(ValueError, match=r"one energy per sample, shape \(8,\), got \(8, 1\)"):
        m.step(DATA[:8])


class Exploding(ImprovedCD):
    "Adds 50 to every branch's output bias before iteration 5: the energies leave the guard's +-10."

    def step(self, batch):
        if self.iteration == 4:
            with torch.no_grad():
                for b in self.net.branches:
                    b.head.bias.add_(50.0)
        return super().step(batch)


def test_divergence_guard_stops_and_keeps_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = Exploding(small(), SHAPE, device="cpu", generator=torch.Generator().manual_seed(0))
    path = tmp_path / "icd.pt"
    with pytest.raises(TrainingDiverged, match=r"Training diverged at iteration 5: .*energy_pos=.*within ±10") as e:
        fit(m, DATA, generator=torch.Generator().manual_seed(1), ckpt_path=path, ckpt_every=2, log_every=1)
    assert e.value.checkpoint == path and load_checkpoint(path, restore_rng=False)["iteration"] == 4


def _replay_last_step(m, state, n):
    "The chain of `negatives` from noise replayed by hand: (x_{K-1}, x_kl) with the same random numbers."
    c = m.cfg
    m.gen.set_state(state)
    x = langevin(m.net, m.noise(n), c.steps - 1, c.step_size, c.noise, m.gen, clamp=(0.0, 1.0))
    x_kl = langevin(m.net, x, 1, c.step_size, c.noise, m.gen, clamp=(0.0, 1.0), last_graph=True)
    return x, x_kl


def test_kl_term_reaches_parameters_only_through_the_last_step():
    m = method(small(buffer=False, entropy=False, kl_subset=None))
    params = list(m.net.parameters())
    state = m.gen.get_state()
    _, x_kl = m.negatives(8)
    loss, ent = m.kl_loss(x_kl)
    assert ent is None and loss.requires_grad
    g_method = torch.autograd.grad(loss, params, allow_unused=True)
    # 1. the same random numbers, the K-1 steps without a graph and the last with one: the same gradient
    x_prev, x_kl2 = _replay_last_step(m, state, 8)
    assert torch.equal(x_kl.detach(), x_kl2.detach())
    with frozen(m.net):
        loss2 = m.scale_energies(x_kl2).mean()
    g_replay = torch.autograd.grad(loss2, params, allow_unused=True)
    # 2. the closed form: dL/dtheta = -lambda (d grad_x E_theta(x_{K-1}) / dtheta)^T (M * grad_x E_frozen(x_kl))
    xk = x_kl.detach().requires_grad_(True)
    with frozen(m.net):
        (v,) = torch.autograd.grad(m.scale_energies(xk).mean(), xk)
    mask = ((x_kl > 0) & (x_kl < 1)).detach()
    xp = x_prev.detach().requires_grad_(True)
    (gx,) = torch.autograd.grad(m.net(xp).sum(), xp, create_graph=True)
    g_closed = torch.autograd.grad((-m.cfg.step_size * gx * mask * v).sum(), params, allow_unused=True)
    n_nonzero = 0
    for a, b, c in zip(g_method, g_replay, g_closed):
        a, b, c = (torch.zeros_like(params[0]) if t is None else t for t in (a, b, c))
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9) and torch.allclose(a, c, rtol=1e-4, atol=1e-8)
        n_nonzero += int(a.abs().sum() > 0)
    assert n_nonzero > len(params) // 2
    # 3. nothing reaches the parameters directly (frozen), nor the chain's start through earlier steps
    with frozen(m.net):
        assert not m.scale_energies(x_kl.detach()).mean().requires_grad
    x0 = torch.rand(8, *SHAPE, requires_grad=True)
    end = langevin(m.net, x0, 3, 10.0, 0.001, torch.Generator().manual_seed(0), clamp=(0.0, 1.0), last_graph=True)
    with frozen(m.net):
        e = m.scale_energies(end).mean()
    assert torch.autograd.grad(e, x0, allow_unused=True)[0] is None


def test_log_grad_splits_the_same_update():
    def run(log_grad):
        m = method(small(log_grad=log_grad, entropy_min_buffer=0))  # the entropy is on from the first update
        return m, [m.step(DATA[:8])]  # one update: later ones amplify float-rounding differences through the chain

    (m1, l1), (m2, l2) = run(False), run(True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(m1.net.parameters(), m2.net.parameters()))
    assert "grad_cd" not in l1[-1] and l2[-1]["grad_kl"] > 0 and l2[-1]["grad_cd"] > 0 and "entropy" in l2[-1]
    assert all(v.dim() == 0 and not v.requires_grad for v in l2[-1].values())


class Killed(Exception):
    pass


class KilledAt(ImprovedCD):
    kill_at = None

    def step(self, batch):
        if self.iteration + 1 == self.kill_at:
            raise Killed
        return super().step(batch)


def test_resume_is_bit_exact(tmp_path):
    def run(path, kill_at=None):
        torch.manual_seed(3)
        m = KilledAt(small(iters=10), SHAPE, device="cpu", generator=torch.Generator().manual_seed(3))
        m.kill_at = kill_at
        h = fit(m, DATA, generator=torch.Generator().manual_seed(2), ckpt_path=path, ckpt_every=4, log_every=2)
        return h, m.state_dict(), m.ema.module.state_dict()

    h1, s1, e1 = run(tmp_path / "straight.pt")
    with pytest.raises(Killed):
        run(tmp_path / "killed.pt", kill_at=7)
    assert load_checkpoint(tmp_path / "killed.pt", restore_rng=False)["iteration"] == 4
    h2, s2, e2 = run(tmp_path / "killed.pt")
    assert h1 == h2 and "entropy" in h1[-1]
    assert all(torch.equal(s1["net"][k], s2["net"][k]) for k in s1["net"])
    assert all(torch.equal(e1[k], e2[k]) for k in e1)
    assert torch.equal(s1["buffer"]["data"], s2["buffer"]["data"]) and s1["buffer"]["data"].dtype == torch.uint8
    assert torch.equal(s1["gen"], s2["gen"]) and s1["iteration"] == s2["iteration"] == 10


DDP_SCRIPT = '''
import sys, torch
from pathlib import Path
from ebm_nb.presets import get_preset
from ebm_nb.improved_cd import ImprovedCD, fit
from ebm_nb.training import ddp_cleanup, ddp_setup
rank, world = ddp_setup()
torch.manual_seed(rank)                                   # the ranks start apart: train broadcasts rank 0's weights
cfg = get_preset("improved_cd", "smoke", "fmnist", iters=4, batch_size=8, steps=2, buffer_size=32, entropy_min_buffer=8,
                 entropy_refs=8, step_size=10.0)
m = ImprovedCD(cfg, (1, 16, 16), device="cpu", generator=torch.Generator().manual_seed(10 + rank))
data = torch.rand(128, 1, 16, 16, generator=torch.Generator().manual_seed(0))
hist = fit(m, data, generator=torch.Generator().manual_seed(5), log_every=2)
torch.save({"net": m.net.state_dict(), "ema": m.ema.module.state_dict(), "buffer": m.buffer.data.clone(), "hist": hist},
           Path(sys.argv[1]) / f"rank{rank}.pt")
ddp_cleanup()
'''


def test_ddp_two_ranks_hold_identical_weights(tmp_path):
    script = tmp_path / "icd_ddp.py"
    script.write_text(DDP_SCRIPT)
    r0, r1 = torchrun(script, tmp_path)
    assert all(torch.equal(r0["net"][k], r1["net"][k]) for k in r0["net"])  # broadcast + averaged, clipped gradients
    assert all(torch.equal(r0["ema"][k], r1["ema"][k]) for k in r0["ema"])  # the EMA equal across ranks
    assert not torch.equal(r0["buffer"], r1["buffer"])  # each rank keeps its own buffer
    assert "entropy" in r0["hist"][-1]
