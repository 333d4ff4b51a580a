"""Edge cases of ebm_nb.sampling: argument checks, seeded reproducibility, the differentiable last step,
replay-buffer bookkeeping and state round trips, augmentations and the nearest-neighbour entropy."""

import math

import pytest
import torch

from ebm_nb.checkpoints import load_checkpoint, save_checkpoint
from ebm_nb.nets import ConvEnergy, MLPEnergy
from ebm_nb.sampling import (
    AUGMENTATIONS,
    ChainBuffer,
    ChainRecorder,
    ReplayBuffer,
    _pure_step,
    augment,
    from_buffer,
    langevin,
    langevin_step,
    nn_entropy,
)

E = lambda x: 0.5 * x.pow(2).flatten(1).sum(1)
noise_init = lambda n, generator=None: torch.rand(n, 1, 4, 4, generator=generator)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- Langevin: bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [-1, 2.0, True, None])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match=r"steps must be a non-negative integer, got"):
        langevin(E, torch.zeros(2, 2), steps, 0.1)


@pytest.mark.parametrize("step_size", [0, -0.1, "0.1"])
def test_bad_step_size(step_size):
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        langevin(E, torch.zeros(2, 2), 3, step_size)
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        langevin_step(E, torch.zeros(2, 2), step_size, 0.1)


def test_bad_noise_clamp_clip_and_energy_shape():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="noise must be a non-negative number, got -1"):
        langevin(E, x, 1, 0.1, noise=-1)
    with pytest.raises(ValueError, match=r"clamp must be a pair \(lo, hi\) with lo < hi"):
        langevin(E, x, 1, 0.1, clamp=(1, 0))
    with pytest.raises(ValueError, match="grad_clip must be a positive number"):
        langevin(E, x, 1, 0.1, grad_clip=0)
    with pytest.raises(ValueError, match=r"one energy per sample, shape \(2,\), got \(\)"):
        langevin(lambda x: x.sum(), x, 1, 0.1)


# --- Langevin: behaviour -------------------------------------------------------------------------------------


def test_zero_steps_and_chain_shape():
    x = torch.randn(5, 3)
    assert torch.equal(langevin(E, x, 0, 0.1), x)
    rec = ChainRecorder()
    y = langevin(E, x, 4, 0.1, callback=rec)
    assert rec.states.shape == (5, 5, 3) and rec.steps == [0, 1, 2, 3, 4] and torch.equal(rec.states[-1], y)
    rec2 = ChainRecorder(keep=2)
    langevin(E, x, 7, 0.1, callback=rec2, every=3)
    assert rec2.steps == [0, 3, 6, 7] and rec2.states.shape == (4, 2, 3) and rec2.energies.shape == (4, 2)


def test_seeded_chains_are_identical():
    f = MLPEnergy(hidden=16, depth=2)
    x = torch.randn(32, 2)
    recs = [ChainRecorder() for _ in range(3)]
    for r, s in zip(recs, (7, 7, 8)):
        langevin(f, x, 10, 0.01, generator=gen(s), callback=r)
    c1, c2, c3 = (r.states for r in recs)
    assert torch.equal(c1, c2) and not torch.equal(c1, c3) and torch.equal(recs[0].energies, recs[1].energies)


def test_input_untouched_and_no_param_grads():
    f = ConvEnergy(size=8, width=4)
    x = torch.rand(4, 1, 8, 8)
    x0 = x.clone()
    with torch.no_grad():
        y = langevin(f, x, 3, 0.01, clamp=(0, 1))
    assert torch.equal(x, x0) and not x.requires_grad and not y.requires_grad
    assert y.min() >= 0 and y.max() <= 1
    assert all(p.grad is None for p in f.parameters())


def test_noise_zero_is_gradient_descent_and_uses_no_randomness():
    g = gen(0)
    state = g.get_state()
    x = torch.tensor([[2.0, -1.0]])
    assert torch.allclose(langevin(E, x, 3, 0.5, noise=0, generator=g), x * 0.5**3)
    assert torch.equal(g.get_state(), state)


def test_create_graph_gradient_reaches_energy_parameters():
    "Improved CD's KL term: a loss on the last step's output, with the energy frozen, reaches theta through grad_x E."
    torch.manual_seed(0)
    f = ConvEnergy(size=8, width=4)
    x = langevin(f, torch.rand(4, 1, 8, 8), 3, 0.01)
    x_kl = langevin_step(f, x, 0.01, 0.001, create_graph=True, clamp=(0, 1))
    assert x_kl.requires_grad
    f.requires_grad_(False)
    loss = f(x_kl).mean()
    f.requires_grad_(True)
    loss.backward()
    grads = [p.grad for p in f.trunk.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # without create_graph the step is cut from the parameters
    assert not langevin_step(f, x, 0.01, 0.001).requires_grad


def test_create_graph_keeps_history_of_x():
    "With create_graph and an x that requires grad (e.g. a generator output), the step stays differentiable in x."
    z = torch.randn(3, 2, requires_grad=True)
    y = langevin_step(E, 2 * z, 0.1, 0, create_graph=True)
    y.sum().backward()
    assert torch.allclose(z.grad, torch.full_like(z, 2 * 0.9))


def test_pure_step_matches_eager():
    "The step `compile=True` compiles (torch.func.grad) computes what the eager step (autograd.grad) computes."
    f = MLPEnergy(hidden=16, depth=2)
    x, eps = torch.randn(8, 2), torch.randn(8, 2)
    kw = dict(grad_clip=0.5, clamp=(-1, 1))
    y, e = _pure_step(f, x, eps, 0.05, 0.0, **kw)
    assert torch.allclose(y, langevin_step(f, x, 0.05, 0, **kw), atol=1e-6) and torch.allclose(e, f(x), atol=1e-6)
    assert torch.allclose(
        _pure_step(f, x, eps, 0.05, 0.1)[0] - _pure_step(f, x, eps, 0.05, 0.0)[0], 0.1 * eps, atol=1e-6
    )
    # compile=True off CUDA runs the eager chain
    assert torch.equal(
        langevin(f, x, 3, 0.01, generator=gen(1), compile=True), langevin(f, x, 3, 0.01, generator=gen(1))
    )


def test_compiled_pure_step_on_cpu():
    """`_pure_step` compiles as one graph (fullgraph: no graph break through torch.func) and computes what it does
    eagerly. The `aot_eager` backend runs dynamo and AOTAutograd, what our code can break, without inductor's C++
    code generation (13 s cold on two CPU cores), which a GPU replaces with Triton anyway."""
    f = MLPEnergy(hidden=16, depth=2)
    x, eps = torch.randn(8, 2), torch.randn(8, 2)
    step = torch.compile(_pure_step, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(step(f, x, eps, 0.05, 0.1)[0], _pure_step(f, x, eps, 0.05, 0.1)[0], atol=1e-5)


def test_spectral_norm_chain_under_parametrize_cached():
    "The prose's advice: a spectral-norm energy can run a chain with the normalised weights computed once."
    f = ConvEnergy(size=8, width=4, spectral_norm=True).eval()
    x = torch.rand(4, 1, 8, 8)
    a = langevin(f, x, 3, 0.01, generator=gen(0))
    with torch.nn.utils.parametrize.cached():
        b = langevin(f, x, 3, 0.01, generator=gen(0))
    assert torch.allclose(a, b, atol=1e-6)


# --- Replay buffer -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -5, 2.5])
def test_bad_capacity(capacity):
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        ReplayBuffer(capacity, noise_init)


def test_bad_buffer_args():
    with pytest.raises(ValueError, match=r"reinit_prob must be in \[0, 1\], got 1.5"):
        ReplayBuffer(10, noise_init, 1.5)
    buf = ReplayBuffer(10, noise_init)
    with pytest.raises(ValueError, match="Cannot sample n=11 distinct slots from a buffer with capacity 10"):
        buf.sample(11)
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        buf.sample(0)
    with pytest.raises(ValueError, match="Cannot sample n=1 distinct slots from a buffer with 0 filled slots"):
        buf.sample(1, filled_only=True)
    buf.push(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\) do not fit a buffer of shape \(1, 4, 4\)"):
        buf.push(torch.zeros(2, 3, 4, 4))


def test_buffer_sample_update_push():
    buf = ReplayBuffer(8, noise_init, reinit_prob=0.0)
    x, idx = buf.sample(8, generator=gen(0))
    assert sorted(idx.tolist()) == list(range(8)) and len(buf) == 0
    buf.update(idx, torch.ones_like(x) * idx.view(-1, 1, 1, 1))
    y, idy = buf.sample(8, generator=gen(1))
    assert torch.equal(y[:, 0, 0, 0], idy.float())  # each slot returns what was written there
    ring = ReplayBuffer(4, noise_init)
    for v in range(6):
        ring.push(torch.full((1, 1, 4, 4), float(v)))
    assert sorted(ring.data[:, 0, 0, 0].tolist()) == [2, 3, 4, 5] and ring.ptr == 2 and len(ring) == 4


def test_buffer_reproducible_and_state_round_trip(tmp_path):
    buf = ReplayBuffer(50, noise_init, reinit_prob=0.2)
    buf.push(torch.rand(30, 1, 4, 4, generator=gen(0)))
    save_checkpoint(tmp_path / "ck.pt", 1, buf=buf)
    other = ReplayBuffer(50, noise_init, reinit_prob=0.2)
    load_checkpoint(tmp_path / "ck.pt", buf=other)
    assert torch.equal(other.data, buf.data) and torch.equal(other.filled, buf.filled) and other.ptr == buf.ptr == 30
    a, ia = buf.sample(20, generator=gen(3))
    b, ib = other.sample(20, generator=gen(3))
    assert torch.equal(a, b) and torch.equal(ia, ib)
    twin = ReplayBuffer(50, noise_init)
    twin.load_state_dict(buf.state_dict())
    twin.push(torch.full((5, 1, 4, 4), 7.0))
    assert not torch.equal(twin.data, buf.data)  # loading copies
    empty = ReplayBuffer(50, noise_init)
    empty.load_state_dict(ReplayBuffer(50, noise_init).state_dict())
    assert len(empty) == 0 and empty.data is None
    with pytest.raises(
        ValueError, match="capacity 50 cannot be loaded into one of capacity 10; build it with capacity=50"
    ):
        ReplayBuffer(10, noise_init).load_state_dict(buf.state_dict())


def test_chain_buffer_builds_on_the_replay_buffer(tmp_path):
    "One buffer: ChainBuffer's storage, ring and state are ReplayBuffer's; a FIFO add is a push."
    ring, fifo = ReplayBuffer(6, noise_init), ChainBuffer(6, noise_init, policy="fifo")
    for k in range(4):
        x = torch.rand(4, 1, 4, 4, generator=gen(k))
        ring.push(x)
        fifo.add(x)
    assert isinstance(fifo, ReplayBuffer) and torch.equal(fifo.data[:6], ring.data) and fifo.ptr == ring.ptr == 4
    assert len(fifo) == len(ring) == 6 and fifo.seen == 16
    res = ChainBuffer(8, noise_init, policy="reservoir", uint8=True)
    for k in range(5):
        res.add(torch.rand(4, 1, 4, 4, generator=gen(k)), gen(10 + k))
    save_checkpoint(tmp_path / "ck.pt", 1, buf=res)
    back = ChainBuffer(8, noise_init, policy="reservoir", uint8=True)
    load_checkpoint(tmp_path / "ck.pt", buf=back)
    assert torch.equal(back.data, res.data) and (back.size, back.seen, back.ptr) == (res.size, res.seen, res.ptr)
    assert torch.equal(back.draw(5, gen(3)), res.draw(5, gen(3)))
    old = {k: v for k, v in res.state_dict().items() if k != "filled"}  # a state saved before `filled` was kept
    again = ChainBuffer(8, noise_init, policy="reservoir", uint8=True)
    again.load_state_dict(old)
    assert again.filled.all() and torch.equal(again.data, res.data)


# --- Augmentations and entropy -------------------------------------------------------------------------------


def test_augment_bad_input_and_properties():
    with pytest.raises(ValueError, match=r"augment expects images \(N, C, H, W\), got shape \(4, 8, 8\)"):
        augment(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="Unknown augmentation 'blur'"):
        augment(torch.rand(2, 1, 8, 8), ops=("blur",))
    x = torch.rand(16, 1, 28, 28, requires_grad=True)
    y = augment(x, generator=gen(0), ops=AUGMENTATIONS)  # 'gray' is a no-op on one channel
    assert y.shape == x.shape and not y.requires_grad and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y, augment(x, generator=gen(0), ops=AUGMENTATIONS))
    assert torch.equal(augment(x, ops=()), x.detach())
    rgb = torch.rand(200, 3, 8, 8)
    gray = augment(rgb, generator=gen(1), ops=("gray",))
    frac = ((gray[:, 0] == gray[:, 1]) & (gray[:, 1] == gray[:, 2])).flatten(1).all(1).float().mean()
    assert 0.1 < frac < 0.3


def test_nn_entropy():
    bank = torch.randn(64, 10, generator=gen(0))
    x = torch.randn(8, 10, generator=gen(1), requires_grad=True)
    h = nn_entropy(x, bank)
    h.backward()
    assert torch.isfinite(h) and x.grad.abs().sum() > 0
    assert nn_entropy(2 * x, 2 * bank) > h
    assert math.isclose(nn_entropy(x.view(8, 1, 2, 5), bank.view(64, 2, 5)).item(), h.item(), rel_tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_buffer_chain_and_recorder_make_no_host_sync():
    "The hot path of a persistent chain (buffer draw, Langevin, recording, write-back) never waits for the GPU."
    dev = "cuda"
    f = MLPEnergy(hidden=16, depth=2).to(dev)
    buf = ReplayBuffer(256, lambda n, generator=None: torch.rand(n, 2, generator=generator, device=dev), device=dev)
    g = torch.Generator(dev).manual_seed(0)
    x, idx = from_buffer(buf, 64, g)
    buf.update(idx, langevin(f, x, 2, 0.01, generator=g))  # warm-up allocations
    torch.cuda.set_sync_debug_mode("error")
    try:
        rec = ChainRecorder()
        x, idx = from_buffer(buf, 64, g, augment=lambda x, generator=None: x.flip(-1))
        buf.update(idx, langevin(f, x, 5, 0.01, generator=g, callback=rec, every=2))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert rec.states.is_cuda and buf.data.is_cuda and buf.filled.is_cuda


def test_one_augmentation_entry_point():
    x = torch.rand(6, 3, 8, 8, generator=gen(0))
    a = augment(x, gen(1), "paper", crop_scale=(0.5, 1.0), blur=3)
    assert torch.equal(a, augment(x, gen(1), ops="paper", crop_scale=(0.5, 1.0), blur=3)) and a.shape == x.shape
    with pytest.raises(TypeError, match="options of ops='paper'"):
        augment(x, gen(1), ("flip",), p_gray=0.5)
    with pytest.raises(ValueError, match="ops must be a tuple"):
        augment(x, gen(1), "crop")
    with pytest.raises(ValueError, match=r"augment expects images \(N, C, H, W\)"):
        augment(x[0], ops="paper")


def test_recorder_takes_chains_without_energies():
    rec = ChainRecorder()
    for i in range(3):
        rec(i, torch.zeros(2, 2), None)
    assert rec.states.shape == (3, 2, 2) and rec.energies is None
    with pytest.raises(TypeError, match=r"callable as callback\(i, x, energy\)"):
        langevin(E, torch.zeros(2, 2), 1, 0.1, callback=1)


def test_compiled_chain_on_cpu_equals_eager():
    "`langevin(compile=True)` runs compiled (inductor) on a CPU and gives the eager chain's states and energies."
    from ebm_nb.sampling import ChainRecorder

    f = MLPEnergy(hidden=16, depth=2)
    x = torch.randn(64, 2)
    rf, rs = ChainRecorder(), ChainRecorder()
    fast = langevin(f, x, 6, 0.01, generator=gen(0), compile=True, callback=rf)
    slow = langevin(f, x, 6, 0.01, generator=gen(0), callback=rs)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert torch.allclose(rf.energies, rs.energies, atol=1e-5)
    last = langevin(f, x, 6, 0.01, generator=gen(0), compile=True, last_graph=True)
    assert last.requires_grad and torch.allclose(last, slow, atol=1e-5)  # 5 compiled steps, the last eager
