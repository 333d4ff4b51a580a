"""Edge cases of ebm_nb.metrics: bad inputs fail with clear errors; a few numeric checks."""

import numpy as np
import pytest
import torch

from ebm_nb import metrics as M


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_mismatched_feature_dims(rng):
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 5))
    for fn in (M.fd_from_features, M.kid, M.mmd_rbf, M.sliced_w2):
        with pytest.raises(ValueError, match="dimension 4 but .* has 5"):
            fn(a, b)


def test_frechet_shapes():
    with pytest.raises(ValueError, match="Shapes do not match"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_empty_and_too_small_inputs(rng):
    a = rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="has 0 samples"):
        M.sliced_w2(np.zeros((0, 2)), a)
    with pytest.raises(ValueError, match="has 1 samples; this metric needs at least 2"):
        M.fd_from_features(a[:1], a)
    with pytest.raises(ValueError, match="has 0 samples"):
        M.auroc([], [1.0])
    with pytest.raises(ValueError, match="has 1 samples"):
        M.mmd_rbf(a[:1], a)


def test_nan_and_bad_shapes(rng):
    a = rng.normal(size=(10, 2))
    b = a.copy()
    b[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        M.sliced_w2(a, b)
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        M.gaussian_stats(np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match="one score per sample"):
        M.auroc(a, a)


@pytest.mark.parametrize("n_proj", [0, -5, 2.5, True])
def test_n_proj_must_be_positive_int(rng, n_proj):
    a = rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="n_proj must be a positive integer"):
        M.sliced_w2(a, a, n_proj=n_proj)


def test_kid_and_mmd_arguments(rng):
    a = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match="subsets must be a positive integer"):
        M.kid(a, a, subsets=0)
    with pytest.raises(ValueError, match="subset_size must be a positive integer"):
        M.kid(a, a, subset_size=-1)
    with pytest.raises(ValueError, match="bandwidth must be a positive number"):
        M.mmd_rbf(a, a, bandwidth=0.0)


def test_grid_arguments():
    energy = lambda x: (x**2).sum(1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        M.grid_log_density(energy, n=0)
    with pytest.raises(ValueError, match="bound must be a positive number"):
        M.grid_log_density(energy, bound=-1.0)
    with pytest.raises(ValueError, match="one value per point"):
        M.grid_log_density(lambda x: x, n=10)
    with pytest.raises(ValueError, match="non-finite energies"):
        M.grid_log_density(lambda x: x[:, 0] / 0.0, n=10)
    with pytest.raises(ValueError, match="2D points"):
        M.grid_nll(energy, np.zeros((3, 3)), n=10)
    with pytest.raises(ValueError, match=r"1 of 2 points lie outside \[-4.5, 4.5\]"):
        M.grid_nll(energy, [[0.0, 0.0], [0.0, -4.6]], n=10)


def test_image_metrics_shapes():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="one shape"):
        M.psnr(x, torch.rand(2, 1, 8, 9))
    with pytest.raises(ValueError, match="one shape"):
        M.ssim(x[:, 0], x[:, 0])
    with pytest.raises(ValueError, match="data_range must be a positive number"):
        M.psnr(x, x, data_range=0)


def test_fd_fmnist_rejects_bad_images():
    good = torch.linspace(0, 1, 4 * 28 * 28).reshape(4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"x_gen has values in \[-1, 1\]; images must lie in \[0, 1\]"):
        M.fd_fmnist(good * 2 - 1, good)
    with pytest.raises(ValueError, match=r"x_ref must be images of shape \(N, 1, 28, 28\), got \(4, 28, 28\)"):
        M.fd_fmnist(good, good[:, 0])
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\), got \(4, 3, 28, 28\)"):
        M.fd_fmnist(good.expand(-1, 3, -1, -1), good)
    with pytest.raises(ValueError, match="x_gen is empty"):
        M.fd_fmnist(good[:0], good)
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        M.fmnist_features((good * 255).to(torch.uint8))


def test_inception_weights_variable_missing(monkeypatch):
    x = torch.rand(4, 3, 16, 16)
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    with pytest.raises(RuntimeError, match="EBM_NB_INCEPTION_WEIGHTS is not set.*pt_inception-2015-12-05-6726825d.pth"):
        M.inception_fid(x, x)
    monkeypatch.setenv(M.INCEPTION_ENV, "/nonexistent/pt_inception.pth")
    with pytest.raises(FileNotFoundError, match="is not a file.*Download"):
        M.inception_fid(x, x)
    with pytest.raises(ValueError, match="2 channels"):
        M.inception_fid(torch.rand(4, 2, 16, 16), x)


def test_classifier_checksum_mismatch(monkeypatch):
    monkeypatch.setattr(M, "FMNIST_CLASSIFIER_SHA256", "0" * 64)
    monkeypatch.setattr(M, "_CLASSIFIERS", {})
    with pytest.raises(ValueError, match="has SHA-256 .* but FMNIST_CLASSIFIER_SHA256 is 0000"):
        M.load_fmnist_classifier("cpu")


# --- numeric checks ---------------------------------------------------------------------------------------------


def test_frechet_1d_closed_form():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    assert np.isclose(M.frechet_distance([1.0], [[9.0]], [-1.0], [[4.0]]), 4.0 + 1.0)


def test_frechet_singular_covariances(rng):
    # rank-deficient covariances (3 samples in 10-D): finite and non-negative up to round-off
    a, b = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
    v = M.fd_from_features(a, b)
    assert np.isfinite(v) and v > -1e-6


def test_sliced_w2_is_symmetric_and_seeded(rng):
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) + 1
    assert M.sliced_w2(a, b, seed=3) == pytest.approx(M.sliced_w2(b, a, seed=3), rel=1e-12)
    assert M.sliced_w2(a, b, seed=3) != M.sliced_w2(a, b, seed=4)


def test_auroc_ties_and_energy_sign():
    assert M.auroc([1.0, 1.0], [1.0]) == 0.5
    assert M.energy_auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and M.energy_auroc([2.0, 3.0], [0.0, 1.0]) == 0.0


def test_psnr_known_value():
    x = torch.zeros(1, 1, 4, 4)
    y = torch.full_like(x, 0.01)  # MSE 1e-4 -> 40 dB
    assert M.psnr(x, y) == pytest.approx(40.0)


def test_mmd_rbf_same_vs_shifted(rng):
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    assert abs(M.mmd_rbf(a, b)) < 0.01 < M.mmd_rbf(a, b + 1.0)


def test_inception_path_wiring(monkeypatch, tmp_path):
    "Without torchmetrics installed, a stand-in NoTrainInceptionV3 checks what inception_fid feeds it."
    import sys, types

    seen = {}

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen.update(name=name, features=features_list, path=feature_extractor_weights_path)

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return x.double().flatten(1)[:, :6]  # a 6-d stand-in for the 2048-d pool features

    fid_mod = types.ModuleType("torchmetrics.image.fid")
    fid_mod.NoTrainInceptionV3 = FakeInception
    for name, mod in (
        ("torchmetrics", types.ModuleType("torchmetrics")),
        ("torchmetrics.image", types.ModuleType("torchmetrics.image")),
        ("torchmetrics.image.fid", fid_mod),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setenv(M.INCEPTION_ENV, str(weights))
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.rand(40, 1, 8, 8, generator=g), torch.rand(30, 1, 8, 8, generator=g)
    r = M.inception_fid(xa, xb, batch_size=16, device="cpu")
    assert seen == {"name": "inception-v3-compat", "features": ["2048"], "path": str(weights)}
    u8 = lambda x: (x * 255).round().flatten(1)[:, :6].numpy()
    assert (r["n_gen"], r["n_ref"]) == (40, 30) and np.isclose(r["fid"], M.fd_from_features(u8(xa), u8(xb)))
