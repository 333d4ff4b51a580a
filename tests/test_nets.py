"""Edge cases of ebm_nb.nets: argument checks, shapes and ranges at every size, spectral norm, state round trips."""

import pytest
import torch
from torch import nn

from ebm_nb.nets import IMAGE_SIZES, ConvEncoder, ConvEnergy, ConvGenerator, MLPEnergy, n_params


@pytest.mark.parametrize("cls", [ConvEnergy, ConvGenerator, ConvEncoder])
@pytest.mark.parametrize("size", [0, 7, 20, 64, "28"])
def test_unsupported_size(cls, size):
    with pytest.raises(ValueError, match=r"Unknown size .*valid values are: 8, 16, 28, 32\. Resize or pad"):
        cls(size=size)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim must be a positive integer, got 0"),
        (dict(hidden=2.5), "hidden must be a positive integer, got 2.5"),
        (dict(depth=True), "depth must be a positive integer, got True"),
        (dict(act="gelu"), "Unknown act 'gelu'; valid values are: swish, elu, relu, lrelu"),
    ],
)
def test_mlp_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPEnergy(**kwargs)


def test_conv_bad_args():
    with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
        ConvEnergy(width=0)
    with pytest.raises(ValueError, match="in_ch must be a positive integer, got -1"):
        ConvEncoder(in_ch=-1)
    with pytest.raises(ValueError, match="z_dim must be a positive integer, got 0"):
        ConvGenerator(z_dim=0)
    with pytest.raises(ValueError, match="z_dim must be a positive integer, got 0"):
        ConvEncoder(z_dim=0)
    with pytest.raises(ValueError, match="Unknown act 'tanh'"):
        ConvEnergy(act="tanh")


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_shapes_and_ranges(size):
    torch.manual_seed(size)
    x = torch.rand(3, 3, size, size)
    e = ConvEnergy(in_ch=3, size=size, width=4)(x)
    assert e.shape == (3,) and e.dtype == torch.float32 and torch.isfinite(e).all()
    g = ConvGenerator(z_dim=8, out_ch=3, size=size, width=4)
    out = g(10 * torch.randn(3, 8))  # large latents still land in [0, 1]
    assert out.shape == (3, 3, size, size) and out.min() >= 0 and out.max() <= 1
    mu, logvar = ConvEncoder(in_ch=3, size=size, z_dim=8, width=4)(out)
    assert mu.shape == logvar.shape == (3, 8) and torch.isfinite(logvar).all()


def test_energies_are_differentiable_in_x_and_params():
    for f, x in [
        (MLPEnergy(dim=3, hidden=8, depth=2), torch.randn(4, 3)),
        (ConvEnergy(size=8, width=4), torch.rand(4, 1, 8, 8)),
    ]:
        x.requires_grad_(True)
        f(x).sum().backward()
        assert x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in f.parameters())


def test_batch_independence():
    "A sample's energy, image or code does not depend on the rest of the batch."
    torch.manual_seed(0)
    x, z = torch.rand(5, 1, 16, 16), torch.randn(5, 8)
    f, g, enc = (
        ConvEnergy(size=16, width=4),
        ConvGenerator(z_dim=8, size=16, width=4),
        ConvEncoder(size=16, z_dim=8, width=4),
    )
    assert torch.allclose(f(x)[:2], f(x[:2]), atol=1e-5)
    assert torch.allclose(g(z)[:2], g(z[:2]), atol=1e-5)
    assert torch.allclose(enc(x)[0][:2], enc(x[:2])[0], atol=1e-5)


def test_spectral_norm_and_state_round_trip():
    torch.manual_seed(0)
    f = ConvEnergy(size=8, width=4, spectral_norm=True)
    x = torch.rand(4, 1, 8, 8)
    for _ in range(20):
        f(x)  # power iterations (training mode)
    f.eval()
    for m in f.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert abs(torch.linalg.matrix_norm(m.weight.flatten(1), 2).item() - 1) < 1e-2
    g = ConvEnergy(size=8, width=4, spectral_norm=True).eval()
    g.load_state_dict(f.state_dict())
    assert torch.equal(f(x), g(x))
    assert n_params(f) == n_params(ConvEnergy(size=8, width=4))


def test_n_params():
    assert n_params(nn.Linear(3, 2)) == 8
    assert n_params(MLPEnergy(dim=2, hidden=4, depth=1)) == 2 * 4 + 4 + 4 + 1


@pytest.mark.parametrize(
    "make, x, match",
    [
        (
            lambda: ConvEnergy(1, 28, width=4),
            torch.rand(2, 1, 32, 32),
            r"ConvEnergy\(in_ch=1, size=28\) needs x of shape \(N, 1, 28, 28\), got \(2, 1, 32, 32\)",
        ),
        (
            lambda: ConvEnergy(1, 28, width=4),
            torch.rand(1, 28, 28),
            r"needs x of shape \(N, 1, 28, 28\), got \(1, 28, 28\)",
        ),
        (
            lambda: ConvEnergy(3, 8, width=4),
            torch.rand(2, 1, 8, 8),
            r"ConvEnergy\(in_ch=3, size=8\) needs x .*got \(2, 1, 8, 8\)",
        ),
        (
            lambda: ConvEnergy(1, 8, width=4),
            torch.rand(8, 8),
            r"got \(8, 8\); add the missing batch or channel dimension",
        ),
        (
            lambda: MLPEnergy(dim=2, hidden=4),
            torch.randn(4, 3),
            r"MLPEnergy\(dim=2\) needs x of shape \(N, 2\).*got \(4, 3\)",
        ),
        (lambda: MLPEnergy(dim=2, hidden=4), torch.randn(2), r"MLPEnergy\(dim=2\) needs x .*got \(2,\)"),
        (
            lambda: ConvGenerator(z_dim=8, size=8, width=4),
            torch.randn(3, 16),
            r"ConvGenerator\(z_dim=8\) needs z of shape \(N, 8\), got \(3, 16\)",
        ),
        (
            lambda: ConvGenerator(z_dim=8, size=8, width=4),
            torch.randn(3, 8, 1, 1),
            r"needs z of shape \(N, 8\), got \(3, 8, 1, 1\)",
        ),
        (
            lambda: ConvEncoder(1, 16, z_dim=8, width=4),
            torch.rand(2, 1, 8, 8),
            r"ConvEncoder\(in_ch=1, size=16\) needs x of shape \(N, 1, 16, 16\), got \(2, 1, 8, 8\)",
        ),
    ],
    ids=[
        "energy-size",
        "energy-no-batch",
        "energy-channels",
        "energy-2d",
        "mlp-dim",
        "mlp-no-batch",
        "gen-z",
        "gen-z-4d",
        "encoder-size",
    ],
)
def test_wrong_input_shapes_fail_with_one_sentence(make, x, match):
    with pytest.raises(ValueError, match=match):
        make()(x)


def test_mlp_still_flattens_trailing_dims():
    assert MLPEnergy(dim=64, hidden=4)(torch.randn(3, 1, 8, 8)).shape == (3,)
