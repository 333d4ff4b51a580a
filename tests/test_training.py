"""The training loop: EMA, the divergence guard, argument checks, exact resume, and data-parallel training under torchrun."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebm_nb.core import load_checkpoint, seed_everything
from ebm_nb.training import EMA, GaussianCD, TrainingDiverged, check_logs, train

ROOT = Path(__file__).resolve().parents[1]
DATA = 2 + 0.5 * torch.randn(500, 1, generator=torch.Generator().manual_seed(0))


class Killed(Exception): pass


class KilledAt(GaussianCD):
    "The demo method; step number `kill_at` raises as if the process were killed there."
    def __init__(self, kill_at=None, **kw):
        super().__init__(**kw)
        self.kill_at = kill_at

    def step(self, batch):
        if self.steps + 1 == self.kill_at: raise Killed()
        return super().step(batch)


def test_ema_matches_closed_form_and_copies_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()
    d = 0.7
    ema = EMA(net, decay=d)
    e0 = [p.detach().clone() for p in net.parameters()]
    seq = [[torch.randn_like(p) for p in net.parameters()] for _ in range(6)]
    for ws in seq:
        with torch.no_grad():
            for p, w in zip(net.parameters(), ws): p.copy_(w)
        net(torch.randn(8, 4, dtype=torch.double))  # moves the BatchNorm running stats
        ema.update()
    n = len(seq)
    for i, p in enumerate(ema.module.parameters()):
        closed = d ** n * e0[i] + (1 - d) * sum(d ** (n - k) * seq[k - 1][i] for k in range(1, n + 1))
        assert torch.allclose(p, closed, atol=1e-12)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean) and ema.updates == n
    assert all(not p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("seeded", [True, False], ids=["generator", "global-rng"])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, seeded):
    def run(path, kill_at=None):
        seed_everything(1)
        m = KilledAt(kill_at, lr=0.05, langevin_steps=1, seed=3)
        ema = {"ema": EMA(m.nets["energy"], 0.9)}
        gen = torch.Generator().manual_seed(2) if seeded else None
        h = train(m, DATA, 30, 16, generator=gen, ema=ema, ckpt_path=path, ckpt_every=10, log_every=4)
        return h, m.state_dict(), ema["ema"].module.state_dict()

    h1, s1, e1 = run(tmp_path / "straight.pt")
    with pytest.raises(Killed): run(tmp_path / "killed.pt", kill_at=17)
    assert load_checkpoint(tmp_path / "killed.pt", restore_rng=False)["iteration"] == 10
    h2, s2, e2 = run(tmp_path / "killed.pt")
    assert h1 == h2 and [r["iter"] for r in h1] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert all(torch.equal(s1["energy"][k], s2["energy"][k]) and torch.equal(e1[k], e2[k]) for k in e1)
    assert torch.equal(s1["gen"], s2["gen"]) and s1["steps"] == s2["steps"] == 30
    assert s1["opt"]["state"][0]["exp_avg"].equal(s2["opt"]["state"][0]["exp_avg"])


def test_history_rows_are_window_means_and_callback_sees_them():
    seen = []
    m = GaussianCD()
    h = train(m, DATA, 10, 8, generator=torch.Generator().manual_seed(0), log_every=3, callback=lambda i, row: seen.append((i, row)))
    assert [r["iter"] for r in h] == [3, 6, 9, 10] and seen == [(r["iter"], r) for r in h]
    assert set(h[0]) == {"iter", "loss", "e_pos", "e_neg", "mu", "sigma"}


def test_guard_fires_on_nan_and_keeps_last_good_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(TrainingDiverged) as err:
        train(GaussianCD(nan_at=3), DATA, 10, 16, ckpt_path=path, ckpt_every=2)
    msg = str(err.value)
    assert "iteration 3" in msg and "loss=nan" in msg and f"{path} (iteration 2)" in msg
    assert err.value.iteration == 3 and err.value.checkpoint == path
    fresh = GaussianCD()
    assert load_checkpoint(path, method=fresh)["iteration"] == 2 and fresh.steps == 2


def test_guard_energy_bound_and_no_checkpoint_yet():
    with pytest.raises(TrainingDiverged, match=r"iteration 1: e_pos=.*no checkpoint was written yet"):
        train(GaussianCD(), DATA, 5, 16, energy_bound=1e-3)
    assert len(train(GaussianCD(), DATA, 5, 16, energy_bound=None)) == 1
    assert check_logs({"energy_neg": -2e4, "e_pos": 1.0, "loss": 2e4}) == {"energy_neg": -2e4}


def test_nonfinite_weights_are_not_checkpointed(tmp_path):
    class Poison(GaussianCD):
        def step(self, batch):
            logs = super().step(batch)
            if self.steps == 5:
                with torch.no_grad(): self.nets["energy"].mu.fill_(float("nan"))
            return {"loss": 0.0}  # the numbers hide it; the weight check before the checkpoint does not
    path = tmp_path / "ck.pt"
    with pytest.raises(TrainingDiverged, match=r"iteration 6: weights of 'energy'=nan.*ck.pt \(iteration 3\)"):
        train(Poison(), DATA, 9, 16, ckpt_path=path, ckpt_every=3)
    fresh = GaussianCD()
    load_checkpoint(path, method=fresh)
    assert torch.isfinite(fresh.nets["energy"].mu).all() and fresh.steps == 3


class Counting(GaussianCD):
    def step(self, batch):
        raise AssertionError("step must not run when the arguments are bad")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(iters=0), ValueError, "iters must be a positive integer, got 0"),
    (dict(iters=2.5), ValueError, "iters must be a positive integer, got 2.5"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    (dict(batch_size=501), ValueError, r"batch_size=501 is larger than the data \(500 examples\); use batch_size <= 500"),
    (dict(log_every=0), ValueError, "log_every must be a positive integer"),
    (dict(ckpt_every=5), ValueError, "ckpt_every=5 needs a ckpt_path"),
    (dict(energy_bound=-1), ValueError, "energy_bound must be a positive number or None"),
    (dict(ema={"method": None}), TypeError, "ema must map names to EMA objects"),
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(data=[1, 2, 3]), TypeError, "data must be a non-empty tensor"),
    (dict(method=torch.nn.Linear(1, 1)), TypeError, "Linear is not a training method: it lacks step, sample"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, error, match):
    args = dict(method=Counting(), data=DATA, iters=5, batch_size=16, ckpt_path=tmp_path / "ck.pt") | kwargs
    if "ckpt_every" in kwargs: args["ckpt_path"] = None
    with pytest.raises(error, match=match):
        train(args.pop("method"), args.pop("data"), args.pop("iters"), args.pop("batch_size"), **args)
    assert not list(tmp_path.iterdir())


def test_reserved_ema_name_and_bad_step_output():
    m = GaussianCD()
    with pytest.raises(ValueError, match=r"ema names \['gen'\] are reserved"):
        train(m, DATA, 2, 4, ema={"gen": EMA(m.nets["energy"])})
    with pytest.raises(ValueError, match="decay must be in"): EMA(m.nets["energy"], decay=1.5)

    class Tensors(GaussianCD):
        def step(self, batch): return {"loss": torch.ones(3)}
    with pytest.raises(TypeError, match="Tensors.step returned a non-number"): train(Tensors(), DATA, 2, 4)

    class Listy(GaussianCD):
        def step(self, batch): return [1.0]
    with pytest.raises(TypeError, match="Listy.step must return a dict of floats, got list"): train(Listy(), DATA, 2, 4)


def test_ddp_two_ranks_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EBM_NB_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "tests" / "ddp_script.py"), str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, f"torchrun failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert not torch.equal(r0["init"]["mu"], r1["init"]["mu"])  # the ranks started apart ...
    for k in r0["final"]:  # ... and end equal (broadcast + averaged gradients), having trained
        assert torch.equal(r0["final"][k], r1["final"][k]) and torch.equal(r0["resumed"][k], r1["resumed"][k])
    assert not torch.equal(r0["final"]["mu"], r0["init"]["mu"]) and torch.isfinite(r0["resumed"]["mu"]).all()
    assert r0["batch_sums"] != r1["batch_sums"]  # each rank draws its own batches
    assert torch.allclose(r0["grad"], torch.full((1, 3), 1.5)) and torch.equal(r0["grad"], r1["grad"])
    assert "iteration 3: loss=nan" in r1["diverged"] and "iteration 3: a non-finite" in r0["diverged"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "rank0.pt", "rank1.pt"]  # one checkpoint, no temp files
    assert load_checkpoint(tmp_path / "ck.pt", restore_rng=False)["iteration"] == 12
