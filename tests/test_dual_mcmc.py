"""Dual-MCMC teaching: bad input fails early, the guard stops an exploding run and keeps its checkpoint, a killed run
resumes bit-exactly through `train(ckpt_path=...)`, spectral norm is computed once per step without changing the chain,
and two gloo ranks under torchrun end with identical nets."""

import dataclasses, textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ebm_nb.checkpoints import load_checkpoint
from ebm_nb.dual_mcmc import DualMCMC, DualMCMCConfig, check_nets, dual_mcmc_nets
from ebm_nb.nets import ConvEncoder, ConvEnergy, ResEncoder, ResEnergy, ResGenerator
from ebm_nb.sampling import ChainRecorder
from ebm_nb.training import TrainingDiverged, train
from helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 16, 16)
CFG = DualMCMCConfig(
    arch="conv",
    z_dim=8,
    width_e=4,
    width_g=4,
    width_i=4,
    x_steps=3,
    z_steps=2,
    batch_size=8,
    iters=8,
    iters_per_epoch=3,
    sample_steps=2,
    lr_e=3e-4,
    lr_g=1e-3,
    lr_i=3e-4,
)
DATA = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("EBM_NB_QUIET", "1")


def make(cfg=CFG, seed=0, **kw):
    torch.manual_seed(seed)
    return DualMCMC(cfg, SHAPE, device="cpu", generator=torch.Generator().manual_seed(seed), **kw)


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x_step=0.0), "x_step must be a positive number, got 0.0"),
        (dict(x_step=-0.5), "x_step must be a positive number, got -0.5"),
        (dict(z_step=0), "z_step must be a positive number, got 0"),
        (dict(sample_step=-1.0), "sample_step must be a positive number"),
        (dict(sigma=0.0), "sigma must be a positive number"),
        (dict(temperature=0.0), "temperature must be a positive number, got 0.0"),
        (dict(temperature=-1e-6), "temperature must be a positive number"),
        (dict(x_noise=0.0), r"T = \(x_noise / x_step\)\^2, which is 0 for x_noise=0"),
        (dict(x_noise=-1e-3), "x_noise must be a non-negative number"),
        (dict(lr_decay=0.0), r"lr_decay must be in \(0, 1\]"),
        (dict(x_steps=0), "x_steps must be a positive integer, got 0"),
        (dict(x_init="noise"), "use z_init='none', got z_init='encoder'"),
        (dict(arch="vit"), "Unknown arch 'vit'; valid values are: resnet, conv, mlp"),
    ],
)
def test_bad_config_fails_with_one_sentence(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualMCMCConfig(**kwargs)


def test_latent_size_mismatch_between_generator_and_encoder():
    nets = dual_mcmc_nets(CFG, SHAPE)
    nets["encoder"] = ConvEncoder(1, 16, z_dim=5, width=4)
    with pytest.raises(ValueError, match="generator takes latents of size 8 but the encoder outputs latents of size 5"):
        make(nets=nets)
    res = {
        "energy": ResEnergy(3, 32, 16),
        "generator": ResGenerator(16, 3, 32, 16),
        "encoder": ResEncoder(3, 32, 12, 8),
    }
    cfg = dataclasses.replace(CFG, arch="resnet", z_dim=16)
    with pytest.raises(
        ValueError, match="generator takes latents of size 16 but the encoder outputs latents of size 12"
    ):
        DualMCMC(cfg, (3, 32, 32), device="cpu", nets=res)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 28, 28), "Unknown size 28; valid values are: 32, 64. The Dual-MCMC ResNets exist for 32 px"),
        ((3, 48, 48), "Unknown size 48; valid values are: 32, 64"),
        ((3, 32, 16), r"square images of shape \(C, H, H\), got \(3, 32, 16\)"),
        ((32, 32), r"square images of shape \(C, H, H\), got \(32, 32\)"),
    ],
)
def test_unsupported_image_size(shape, match):
    with pytest.raises(ValueError, match=match):
        DualMCMC(DualMCMCConfig(width_e=16, width_g=16, width_i=8), shape, device="cpu")


def test_conv_nets_reject_sizes_they_do_not_have_and_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="Unknown size 20; valid values are: 8, 16, 28, 32"):
        DualMCMC(CFG, (1, 20, 20), device="cpu")
    nets = dual_mcmc_nets(CFG, SHAPE)
    nets["energy"] = ConvEnergy(3, 16, 4)
    with pytest.raises(
        ValueError, match=r"energy ConvEnergy handles images of shape \(3, 16, 16\), but the data are \(1, 16, 16\)"
    ):
        check_nets(nets, CFG, SHAPE)
    with pytest.raises(ValueError, match=r"This variant trains the nets \['energy', 'generator'\]"):
        check_nets(dual_mcmc_nets(CFG, SHAPE), dataclasses.replace(CFG, z_init="none"), SHAPE)


def test_reconstruct_and_sample_arguments():
    m = make(dataclasses.replace(CFG, z_init="none"))
    with pytest.raises(ValueError, match="init='mean' needs an encoder"):
        m.reconstruct(DATA[:4])
    with pytest.raises(ValueError, match="Unknown init 'prior'"):
        m.reconstruct(DATA[:4], init="prior")
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        m.sample(0)
    assert m.sample(5, steps=1, chunk=2).shape == (5, *SHAPE)


# --- the guard --------------------------------------------------------------------------------------------------


class Scaled(nn.Module):
    "A conv energy whose values are multiplied by `scale` from the `at`-th forward call on."

    def __init__(self, scale: float, at: int = 0):
        super().__init__()
        self.net, self.in_ch, self.size, self.scale, self.at, self.calls = (
            ConvEnergy(1, 16, 4, True, "relu"),
            1,
            16,
            scale,
            at,
            0,
        )

    def forward(self, x):
        self.calls += 1
        return self.net(x) * (self.scale if self.calls > self.at else 1.0)


def test_guard_stops_exploding_energies_and_keeps_last_checkpoint(tmp_path):
    nets = dual_mcmc_nets(CFG, SHAPE)
    per_iter = 2 * CFG.x_steps + 2  # energy forwards per iteration: two chains and the loss
    nets["energy"] = Scaled(1e7, at=4 * per_iter)  # iteration 5 explodes
    m, path = make(nets=nets), tmp_path / "ck.pt"
    with pytest.raises(
        TrainingDiverged,
        match=r"Training diverged at iteration 5: .*e_gap=.*last good checkpoint is .*ck\.pt \(iteration 4\)",
    ):
        train(m, DATA, 10, 8, ckpt_path=path, ckpt_every=2, log_every=1)
    assert load_checkpoint(path, restore_rng=False)["iteration"] == 4


def test_guard_stops_nan():
    nets = dual_mcmc_nets(CFG, SHAPE)
    nets["energy"] = Scaled(float("nan"))
    with pytest.raises(TrainingDiverged, match="iteration 1: .*nan"):
        train(make(nets=nets), DATA, 5, 8, log_every=5)


# --- resume -----------------------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_killed_run_resumes_bit_exactly(tmp_path):
    "A run killed after its checkpoint at iteration 4 and resumed has the weights, optimisers, RNG of an unbroken run."

    def run(path, kill_at=None):
        m = make(seed=3)
        if kill_at is not None:
            step = m.step

            def dying(batch):
                if m.steps + 1 == kill_at:
                    raise Killed()
                return step(batch)

            m.step = dying
        hist = train(
            m, DATA, CFG.iters, 8, generator=torch.Generator().manual_seed(7), ckpt_path=path, ckpt_every=4, log_every=2
        )
        return m, hist

    full, h_full = run(tmp_path / "a.pt")
    with pytest.raises(Killed):
        run(tmp_path / "b.pt", kill_at=6)
    resumed, h_res = run(tmp_path / "b.pt")
    assert h_full == h_res and resumed.steps == full.steps == CFG.iters
    for k in full.nets:
        for (n, a), b in zip(full.nets[k].state_dict().items(), resumed.nets[k].state_dict().values()):
            assert torch.equal(a, b), (k, n)
    assert torch.equal(full.gen.get_state(), resumed.gen.get_state())
    assert [g["lr"] for o in (full.opt_e, full.opt_g, full.opt_i) for g in o.param_groups] == [
        g["lr"] for o in (resumed.opt_e, resumed.opt_g, resumed.opt_i) for g in o.param_groups
    ]
    assert full.opt_g.param_groups[0]["lr"] == pytest.approx(
        CFG.lr_g * CFG.lr_decay ** (CFG.iters // CFG.iters_per_epoch)
    )


# --- spectral norm once per step ----------------------------------------------------------------------------------


def _count_sn(net):
    calls, mods = [0], [m.parametrizations.weight[0] for m in net.modules() if parametrize.is_parametrized(m, "weight")]
    for p in mods:
        p.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls, len(mods)


@pytest.mark.parametrize("arch, shape", [("conv", SHAPE), ("resnet", (3, 32, 32))])
def test_cached_spectral_norm_leaves_the_chain_energies_unchanged(arch, shape):
    cfg = dataclasses.replace(CFG, arch=arch, width_e=8, x_steps=5)
    m = DualMCMC(cfg, shape, device="cpu", generator=torch.Generator().manual_seed(0))
    calls, layers = _count_sn(m.nets["energy"])
    m.nets["energy"].eval()
    y0 = m.G(m._randn(4)).detach()
    state, recs = m.gen.get_state(), (ChainRecorder(), ChainRecorder())
    calls[0] = 0
    a = m.x_chain(y0, callback=recs[0])
    plain = calls[0]
    m.gen.set_state(state)
    calls[0] = 0
    with parametrize.cached():
        b = m.x_chain(y0, callback=recs[1])
    assert plain == layers * (cfg.x_steps + 1) and calls[0] == layers
    assert torch.allclose(recs[0].energies, recs[1].energies, rtol=1e-5, atol=1e-6) and torch.allclose(a, b, atol=1e-6)
    # in training mode one step (two chains and the loss) runs one power iteration per layer, and the loss reaches E
    m.nets["energy"].train()
    calls[0] = 0
    weights = [p for n, p in m.nets["energy"].named_parameters() if n.endswith("original")]  # the raw weights
    before = [p.detach().clone() for p in weights]
    m.step(torch.rand(4, *shape))
    assert calls[0] == layers and len(weights) == layers
    assert all(not torch.equal(p, q) for p, q in zip(weights, before))


def test_a_step_with_cached_spectral_norm_makes_the_update_of_the_uncached_official_step():
    "EBM in evaluation mode (frozen power-iteration vectors): the cache changes the cost, not the numbers."

    def one_step(cache):
        m = make(dataclasses.replace(CFG, cache_sn=cache), seed=4)
        calls, layers = _count_sn(m.nets["energy"])
        m.nets["energy"].eval()
        logs = m.step(DATA[:8])
        return logs, [p.detach() for net in m.nets.values() for p in net.parameters()], calls[0], layers

    (la, pa, ca, layers), (lb, pb, cb, _) = one_step(True), one_step(False)
    assert all(torch.allclose(la[k], lb[k], rtol=1e-5) for k in la)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(pa, pb))
    assert ca == layers and cb == layers * (2 * CFG.x_steps + 2)


# --- step output and the Method protocol --------------------------------------------------------------------------


def test_step_returns_detached_scalars_and_optimisers_are_attributes():
    from ebm_nb.training import check_method, find_optimizers

    m = make()
    check_method(m)
    assert find_optimizers(m) == [m.opt_e, m.opt_g, m.opt_i] and set(m.nets) == {"energy", "generator", "encoder"}
    logs = m.step(DATA[:8])
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in logs.values())
    assert {"loss_e", "loss_g", "loss_i", "e_gap", "sse_rec"} <= set(logs)


# --- DDP ------------------------------------------------------------------------------------------------------------

SCRIPT = """
import sys, torch
from pathlib import Path
from ebm_nb.dual_mcmc import DualMCMC, DualMCMCConfig
from ebm_nb.training import ddp_cleanup, ddp_setup, train
rank, world = ddp_setup()
cfg = DualMCMCConfig(arch="conv", z_dim=8, width_e=4, width_g=4, width_i=4, x_steps=2, z_steps=2, batch_size=8, iters=4)
torch.manual_seed(rank)   # each rank builds different nets: train must broadcast rank 0's
m = DualMCMC(cfg, (1, 16, 16), device="cpu", generator=torch.Generator().manual_seed(10 + rank))
init = {k: {n: t.clone() for n, t in v.state_dict().items()} for k, v in m.nets.items()}
data = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
train(m, data, cfg.iters, cfg.batch_size, generator=torch.Generator().manual_seed(5), log_every=2)
final = {k: v.state_dict() for k, v in m.nets.items()}
torch.save({"init": init, "final": final}, Path(sys.argv[1]) / f"rank{rank}.pt")
ddp_cleanup()
"""


def test_ddp_two_gloo_ranks_hold_identical_nets(tmp_path):
    script = tmp_path / "ddp_dual_mcmc.py"
    script.write_text(textwrap.dedent(SCRIPT))
    r0, r1 = torchrun(script, tmp_path)
    assert set(r0["final"]) == {"energy", "generator", "encoder"}
    assert any(not torch.equal(r0["init"]["energy"][n], r1["init"]["energy"][n]) for n in r0["init"]["energy"])
    for k in r0["final"]:
        for n in r0["final"][k]:
            assert torch.equal(r0["final"][k][n], r1["final"][k][n]), (k, n)
        assert any(not torch.equal(r0["final"][k][n], r0["init"][k][n]) for n in r0["final"][k]), k


def test_run_row_trains_once_and_reuses_the_cached_model(tmp_path, monkeypatch):
    "Above smoke a row's model is cached; a second run loads it, gives the same row and says it was cached."
    from ebm_nb.dual_mcmc import run_row

    monkeypatch.setenv("EBM_NB_CACHE", str(tmp_path))
    kw = dict(scale="smoke", dataset="fmnist", n_eval=20, n_ref=50, n_show=4, track=4, cache=True)
    a = run_row({"preset": "dual_mcmc"}, 0, **kw)
    b = run_row({"preset": "dual_mcmc"}, 0, **kw)
    assert not a["cached"] and b["cached"] and len(list(tmp_path.glob("dual_mcmc-*.pt"))) == 1
    assert a["fd_fmnist"] == b["fd_fmnist"] and a["_history"] == b["_history"] and a["_curve"] == b["_curve"]
    assert a["s_per_iter"] == b["s_per_iter"]
    c = run_row({"preset": "dual_mcmc", "overrides": {"lr_e": 1e-4}}, 0, **kw)
    assert not c["cached"]  # another config, another model


def test_a_committed_model_serves_tracked_rows_only_with_their_tracking(tmp_path, monkeypatch):
    "One committed model per config: every untracked row loads it; a tracked row only if it was saved with that curve."
    from ebm_nb.checkpoints import model_key, publish_pretrained
    from ebm_nb.dual_mcmc import run_row
    from ebm_nb.presets import get_preset

    monkeypatch.setenv("EBM_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EBM_NB_PRETRAINED", str(tmp_path / "pub"))
    kw = dict(scale="smoke", dataset="fmnist", evals=(), cache=True, pretrained=True)
    a = run_row({"preset": "dual_mcmc"}, 0, track=4, **kw)  # nothing committed yet: trains, with its curve
    cfg = get_preset("dual_mcmc", "smoke", "fmnist")
    key = model_key("dual_mcmc", cfg, 0, "fmnist:train:track=4")
    publish_pretrained("m", key, model_key("dual_mcmc", cfg, 0, "fmnist:train", code=False), "cmd", "abc")
    b = run_row({"preset": "dual_mcmc"}, 0, track=4, **kw)
    c = run_row({"preset": "dual_mcmc"}, 0, track=0, **kw)
    d = run_row({"preset": "dual_mcmc"}, 0, track=2, **kw)
    assert not a["cached"] and b["cached"] == c["cached"] == "pretrained" and b["_curve"] == a["_curve"] != []
    assert d["cached"] is False and len(d["_curve"]) == len(a["_curve"])  # other tracking: trained with its own
