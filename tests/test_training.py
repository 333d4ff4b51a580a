"""The training loop: EMA, the divergence guard, argument checks, exact resume, and data-parallel training under
torchrun."""

from pathlib import Path

import pytest
import torch

import copy

from ebm_nb import training
from ebm_nb.core import seed_everything
from ebm_nb.checkpoints import load_checkpoint
from ebm_nb.training import EMA, GaussianCD, TrainingDiverged, check_logs, train
from helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]
DATA = 2 + 0.5 * torch.randn(500, 1, generator=torch.Generator().manual_seed(0))


class Killed(Exception):
    pass


class KilledAt(GaussianCD):
    "The demo method; step number `kill_at` raises as if the process were killed there."

    def __init__(self, kill_at=None, **kw):
        super().__init__(**kw)
        self.kill_at = kill_at

    def step(self, batch):
        if self.steps + 1 == self.kill_at:
            raise Killed()
        return super().step(batch)


def test_ema_matches_closed_form_and_copies_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()
    d = 0.7
    ema = EMA(net, decay=d)
    e0 = [p.detach().clone() for p in net.parameters()]
    seq = [[torch.randn_like(p) for p in net.parameters()] for _ in range(6)]
    for ws in seq:
        with torch.no_grad():
            for p, w in zip(net.parameters(), ws):
                p.copy_(w)
        net(torch.randn(8, 4, dtype=torch.double))  # moves the BatchNorm running stats
        ema.update()
    n = len(seq)
    for i, p in enumerate(ema.module.parameters()):
        closed = d**n * e0[i] + (1 - d) * sum(d ** (n - k) * seq[k - 1][i] for k in range(1, n + 1))
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
    with pytest.raises(Killed):
        run(tmp_path / "killed.pt", kill_at=17)
    assert load_checkpoint(tmp_path / "killed.pt", restore_rng=False)["iteration"] == 10
    h2, s2, e2 = run(tmp_path / "killed.pt")
    assert h1 == h2 and [r["iter"] for r in h1] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert all(torch.equal(s1["energy"][k], s2["energy"][k]) and torch.equal(e1[k], e2[k]) for k in e1)
    assert torch.equal(s1["gen"], s2["gen"]) and s1["steps"] == s2["steps"] == 30
    assert s1["opt"]["state"][0]["exp_avg"].equal(s2["opt"]["state"][0]["exp_avg"])


def test_history_rows_are_window_means_and_callback_sees_them():
    seen = []
    m = GaussianCD()
    h = train(
        m,
        DATA,
        10,
        8,
        generator=torch.Generator().manual_seed(0),
        log_every=3,
        callback=lambda i, row: seen.append((i, row)),
    )
    assert [r["iter"] for r in h] == [3, 6, 9, 10] and [i for i, _ in seen] == [3, 6, 9, 10]
    # the callback sees each row and the training seconds so far, which the history does not keep
    assert all(row == r | {"train_s": row["train_s"]} for (_, row), r in zip(seen, h))
    assert [row["train_s"] for _, row in seen] == sorted(row["train_s"] for _, row in seen) and seen[0][1]["train_s"] > 0
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
                with torch.no_grad():
                    self.nets["energy"].mu.fill_(float("nan"))
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


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(iters=0), ValueError, "iters must be a positive integer, got 0"),
        (dict(iters=2.5), ValueError, "iters must be a positive integer, got 2.5"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
        (
            dict(batch_size=501),
            ValueError,
            r"batch_size=501 is larger than the data \(500 examples\); use batch_size <= 500",
        ),
        (dict(log_every=0), ValueError, "log_every must be a positive integer"),
        (dict(ckpt_every=5), ValueError, "ckpt_every=5 needs a ckpt_path"),
        (dict(energy_bound=-1), ValueError, "energy_bound must be a positive number or None"),
        (dict(ema={"method": None}), TypeError, "ema must map names to EMA objects"),
        (dict(callback=3), TypeError, "callback must be callable"),
        (dict(data=[1, 2, 3]), TypeError, "data must be a non-empty tensor"),
        (dict(method=torch.nn.Linear(1, 1)), TypeError, "Linear is not a training method: it lacks step, sample"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, error, match):
    args = dict(method=Counting(), data=DATA, iters=5, batch_size=16, ckpt_path=tmp_path / "ck.pt") | kwargs
    if "ckpt_every" in kwargs:
        args["ckpt_path"] = None
    with pytest.raises(error, match=match):
        train(args.pop("method"), args.pop("data"), args.pop("iters"), args.pop("batch_size"), **args)
    assert not list(tmp_path.iterdir())


def test_reserved_ema_name_and_bad_step_output():
    m = GaussianCD()
    with pytest.raises(ValueError, match=r"ema names \['gen'\] are reserved"):
        train(m, DATA, 2, 4, ema={"gen": EMA(m.nets["energy"])})
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(m.nets["energy"], decay=1.5)

    class Tensors(GaussianCD):
        def step(self, batch):
            return {"loss": torch.ones(3)}

    with pytest.raises(TypeError, match="Tensors.step returned a non-number"):
        train(Tensors(), DATA, 2, 4)

    class Listy(GaussianCD):
        def step(self, batch):
            return [1.0]

    with pytest.raises(TypeError, match="Listy.step must return a dict of floats or 0-dim tensors, got list"):
        train(Listy(), DATA, 2, 4)


def test_ddp_two_ranks_under_torchrun(tmp_path):
    r0, r1 = torchrun(ROOT / "tests" / "ddp_script.py", tmp_path, timeout=180)
    assert not torch.equal(r0["init"]["mu"], r1["init"]["mu"])  # the ranks started apart ...
    for k in r0["final"]:  # ... and end equal (broadcast + averaged gradients), having trained
        assert torch.equal(r0["final"][k], r1["final"][k]) and torch.equal(r0["resumed"][k], r1["resumed"][k])
    assert not torch.equal(r0["final"]["mu"], r0["init"]["mu"]) and torch.isfinite(r0["resumed"]["mu"]).all()
    for k in r0["ema"]:  # the EMAs were built from each rank's own start, yet average rank 0's weights everywhere
        assert torch.equal(r0["ema"][k], r1["ema"][k]) and not torch.equal(r0["ema"][k], r0["final"][k])
    assert r0["batch_sums"] != r1["batch_sums"]  # each rank draws its own batches
    assert torch.allclose(r0["grad"], torch.full((1, 3), 1.5)) and torch.equal(r0["grad"], r1["grad"])
    assert "iteration 3: loss=nan" in r1["diverged"] and "iteration 3: a non-finite" in r0["diverged"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ck.pt",
        "rank0.pt",
        "rank1.pt",
    ]  # one checkpoint, no temp files
    assert load_checkpoint(tmp_path / "ck.pt", restore_rng=False)["iteration"] == 12


# --- EMA: one fused update ------------------------------------------------------------------------------------


def test_ema_update_is_one_foreach_lerp_with_per_parameter_numerics(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2).double())
    ema, ref = EMA(net, 0.93), copy.deepcopy(net)
    calls, real = [], torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net[:2](torch.randn(6, 5))  # moves the running stats (buffers are copied)
        ema.update()
        with torch.no_grad():
            for e, w in zip(ref.parameters(), net.parameters()):
                e.lerp_(w, 1 - 0.93)
    assert calls == [6] * 4  # one call over all six parameters per update
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), ref.parameters()))
    assert torch.equal(ema.module[1].running_var, net[1].running_var)
    EMA(torch.nn.BatchNorm1d(3, affine=False)).update()  # no parameters at all


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ema_foreach_matches_per_parameter_on_cuda():
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 3)).cuda()
    ema, ref = EMA(net, 0.999), copy.deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1)
    ema.update()
    with torch.no_grad():
        for e, w in zip(ref.parameters(), net.parameters()):
            e.lerp_(w, 1 - 0.999)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), ref.parameters()))


# --- checkpoints of another method, stale temp files -----------------------------------------------------------


class OtherMethod:
    "A method of another class (as GCD is to CD): its load_state_dict reads keys a GaussianCD checkpoint lacks."

    def __init__(self):
        self.net = torch.nn.Linear(1, 1)
        self.nets = {"energy": self.net}
        self.opt = torch.optim.SGD(self.net.parameters(), 0.1)

    def step(self, batch):
        return {"loss": 0.0}

    def sample(self, n):
        return torch.zeros(n, 1)

    def energy(self, x):
        return self.net(x).squeeze(1)

    def state_dict(self):
        return {"net": self.net.state_dict(), "other_opt": self.opt.state_dict()}

    def load_state_dict(self, sd):
        self.net.load_state_dict(sd["net"])
        self.opt.load_state_dict(sd["other_opt"])


def test_resume_from_a_checkpoint_of_another_method_names_both(tmp_path):
    path = tmp_path / "ck.pt"
    train(GaussianCD(), DATA, 4, 16, ckpt_path=path)
    with pytest.raises(TypeError, match=r"ck.pt holds class GaussianCD under 'method', but OtherMethod asked for it"):
        train(OtherMethod(), DATA, 8, 16, ckpt_path=path)
    with pytest.raises(TypeError, match="holds class GaussianCD under 'method', but OtherMethod asked"):
        load_checkpoint(path, method=OtherMethod())


def test_save_and_resume_remove_stale_temp_files(tmp_path):
    path = tmp_path / "ck.pt"
    keep = [tmp_path / ".other.pt.abcdefgh.tmp", tmp_path / "ck.pt.bak"]
    for p in keep:
        p.write_bytes(b"x")
    stale = tmp_path / ".ck.pt.q1w2e3r4.tmp"
    stale.write_bytes(b"half")  # a write killed with SIGKILL
    train(GaussianCD(), DATA, 4, 16, ckpt_path=path, ckpt_every=2)
    assert not stale.exists() and all(p.exists() for p in keep)
    stale.write_bytes(b"half")
    assert len(train(GaussianCD(), DATA, 4, 16, ckpt_path=path)) == 1  # the resume of a finished run removes it too
    assert not stale.exists() and all(p.exists() for p in keep)


# --- tensor logs: no host sync per iteration --------------------------------------------------------------------


class TensorCD(GaussianCD):
    "GaussianCD whose step returns 0-dim tensors (what a GPU method returns to avoid .item())."

    def step(self, batch):
        self.steps += 1
        e_pos, e_neg = self.energy(batch).mean(), self.energy(self.sample(len(batch))).mean()
        loss = e_pos - e_neg
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        net = self.nets["energy"]
        return {
            "loss": torch.tensor(float("nan")) if self.steps == self.nan_at else loss.detach(),
            "e_pos": e_pos.detach(),
            "e_neg": e_neg,
            "mu": net.mu[0],
            "sigma": net.log_sigma[0].exp(),
        }  # mu is a view of a weight


@pytest.mark.parametrize("log_every", [1, 4, 7])
def test_tensor_logs_give_the_float_history(tmp_path, log_every):
    run = lambda cls, path: train(
        cls(seed=2, langevin_steps=1),
        DATA,
        20,
        16,
        generator=torch.Generator().manual_seed(3),
        log_every=log_every,
        ckpt_path=path,
        ckpt_every=6,
    )
    h_float, h_tensor = run(GaussianCD, tmp_path / "f.pt"), run(TensorCD, tmp_path / "t.pt")
    assert h_tensor == h_float and all(type(v) is float for r in h_tensor for k, v in r.items() if k != "iter")
    assert load_checkpoint(tmp_path / "t.pt", restore_rng=False)["extra"]["history"] == h_float


def test_tensor_nan_is_caught_with_iteration_and_last_good_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(TrainingDiverged) as err:  # found at the check before the checkpoint of iteration 6
        train(TensorCD(nan_at=5), DATA, 20, 16, ckpt_path=path, ckpt_every=3, log_every=100)
    assert (
        err.value.iteration == 5
        and "iteration 5: loss=nan" in str(err.value)
        and f"{path} (iteration 3)" in str(err.value)
    )
    assert load_checkpoint(path, restore_rng=False)["iteration"] == 3  # the checkpoint of iteration 6 was not written
    with pytest.raises(TrainingDiverged, match=r"iteration 3: loss=nan.*no checkpoint was written yet"):
        train(TensorCD(nan_at=3), DATA, 10, 16, log_every=5)
    with pytest.raises(TrainingDiverged, match=r"iteration 1: e_pos="):
        train(TensorCD(), DATA, 5, 16, energy_bound=1e-3)


def test_steps_run_between_checks_without_moving_tensors_to_the_host(monkeypatch):
    seen = []  # the tensors a window holds stay tensors until its check
    real = training._to_host
    monkeypatch.setattr(training, "_to_host", lambda rows: seen.append([type(r["loss"]) for r in rows]) or real(rows))
    train(TensorCD(), DATA, 10, 16, log_every=4)
    assert seen == [[torch.Tensor] * 4, [torch.Tensor] * 4, [torch.Tensor] * 2]
    seen.clear()
    train(GaussianCD(), DATA, 4, 16, log_every=4)
    assert seen == [[float] * 4]


class TinyCuda:
    "A tiny method that keeps everything on the GPU: a CUDA generator for its noise, plain SGD, tensor logs."

    def __init__(self):
        self.device = torch.device("cuda")
        self.net = torch.nn.Linear(2, 1).cuda()
        self.nets = {"energy": self.net}
        self.opt = torch.optim.SGD(self.net.parameters(), 0.01)
        self.gen = torch.Generator(device="cuda").manual_seed(0)

    def energy(self, x):
        return self.net(x).squeeze(1)

    def sample(self, n):
        return torch.randn(n, 2, device=self.device, generator=self.gen)

    def step(self, batch):
        e_pos, e_neg = self.energy(batch).mean(), self.energy(self.sample(len(batch))).mean()
        loss = e_pos - e_neg + 0.1 * (e_pos**2 + e_neg**2)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "e_pos": e_pos.detach(), "e_neg": e_neg.detach()}

    def state_dict(self):
        return {"net": self.net.state_dict()}

    def load_state_dict(self, sd):
        self.net.load_state_dict(sd["net"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_host_sync_between_log_points_on_cuda(monkeypatch):
    m, data = TinyCuda(), torch.randn(256, 2, device="cuda")
    ema = {"ema": EMA(m.net, 0.9)}
    m.step(data[:8])
    ema["ema"].update()
    torch.cuda.synchronize()  # warm up (first launches, lazy init)
    flushes, real = [], training._to_host

    def to_host(rows):  # the one sync a window is allowed: its transfer to the host
        torch.cuda.set_sync_debug_mode("default")
        try:
            return real(rows)
        finally:
            flushes.append(len(rows))
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(training, "_to_host", to_host)
    gen = torch.Generator(device="cuda").manual_seed(0)  # batches drawn on the GPU: no index copied from the host
    torch.cuda.set_sync_debug_mode("error")
    try:
        hist = train(m, data, 12, 8, generator=gen, log_every=4, ema=ema)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert flushes == [4, 4, 4] and [r["iter"] for r in hist] == [4, 8, 12]
    assert all(type(v) is float for r in hist for k, v in r.items() if k != "iter")


# --- the progress bar ---------------------------------------------------------------------------------------------


class ManyLogs(GaussianCD):
    "GaussianCD logging as many values as GCD does."

    def step(self, batch):
        logs = super().step(batch)
        return {
            "e_pos": logs["e_pos"],
            "mu": logs["mu"],
            "loss_energy": logs["loss"],
            "sigma": logs["sigma"],
            "loss_td": 0.5,
            "energy_neg": logs["e_neg"],
            "sigma_mean": 1.0,
        }


def test_progress_postfix_shows_at_most_three_short_values(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, it):
            self.it, self.postfixes = it, []

        def __iter__(self):
            return iter(self.it)

        def set_postfix(self, d, refresh=True):
            self.postfixes.append(dict(d))

        def close(self):
            pass

    monkeypatch.setattr(training, "progress", lambda it, **kw: bars.append(Bar(it)) or bars[-1])
    train(ManyLogs(), DATA, 6, 16, log_every=2)
    (bar,) = bars
    assert len(bar.postfixes) == 3 and all(len(p) <= 3 for p in bar.postfixes)
    assert list(bar.postfixes[-1]) == ["loss_energy", "loss_td", "e_pos"]  # loss* first, then in order
    assert all(len(v) <= 10 for p in bar.postfixes for v in p.values())
    train(GaussianCD(), DATA, 2, 16, log_every=2)
    assert list(bars[-1].postfixes[-1]) == ["loss", "e_pos", "e_neg"]


def test_a_bad_float_after_a_bad_tensor_names_the_tensor_iteration():
    class Mixed(GaussianCD):
        def step(self, batch):
            logs = super().step(batch)
            return {
                "loss": torch.tensor(float("nan") if self.steps == 2 else logs["loss"]),
                "e_pos": float("inf") if self.steps == 3 else logs["e_pos"],
            }

    with pytest.raises(TrainingDiverged, match=r"iteration 2: loss=nan"):
        train(Mixed(), DATA, 10, 16, log_every=10)
