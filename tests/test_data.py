"""ebm_nb.data edge cases: toys, digits, Fashion-MNIST files, torchvision formats (tiny fakes, no network), OOD sets,
batches."""

import hashlib
import pickle

import numpy as np
import pytest
import torch

from ebm_nb import data as D


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- 2D toys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", D.TOYS)
def test_toys_shape_seed_bound(name):
    a, b = D.sample_toy(name, 500, _g(3)), D.sample_toy(name, 500, _g(3))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, D.sample_toy(name, 500, _g(4)))
    assert a.abs().max() < D.TOY_BOUND + 1.0
    assert D.sample_toy(name, 1).shape == (1, 2)


@pytest.mark.parametrize("n", [0, -5, 2.5, True, "10"])
def test_toy_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        D.sample_toy("moons", n)


def test_toy_log_density():
    c, std = D.toy_mixture("8gaussians")
    assert c.shape == (8, 2) and abs(std - 0.5 / 1.414) < 1e-12
    assert torch.allclose(c.norm(dim=1), torch.full((8,), 4 / 1.414))
    c25, std25 = D.toy_mixture("25gaussians")
    assert c25.shape == (25, 2) and abs(c25.max().item() - 4 / 2.828) < 1e-6 and abs(std25 - 0.05 / 2.828) < 1e-12
    # at a centre the density is dominated by its own component: log(1/K) - log(2 pi std^2)
    lp = D.toy_log_density("25gaussians", c25[:1])
    assert lp.shape == (1,) and abs(lp.item() - (np.log(1 / 25) - np.log(2 * np.pi * std25**2))) < 1e-4
    # samples are far more likely than points between the modes
    s = D.sample_toy("8gaussians", 100, _g())
    assert D.toy_log_density("8gaussians", s).mean() > D.toy_log_density("8gaussians", torch.zeros(1, 2)).item() + 5
    for name in ["rings", "checkerboard", "2spirals", "swissroll", "moons", "pinwheel"]:
        with pytest.raises(ValueError, match="no closed-form density"):
            D.toy_log_density(name, s)
    with pytest.raises(ValueError, match="valid values are: 8gaussians, 25gaussians"):
        D.toy_log_density("nope", s)
    with pytest.raises(ValueError, match=r"shape \(N,2\)"):
        D.toy_log_density("8gaussians", torch.zeros(4, 3))


# --- digits --------------------------------------------------------------------------------------------------


def test_digits():
    for size in D.DIGIT_SIZES:
        x, y = D.load_digits(size)
        assert x.shape == (1797, 1, size, size) and y.shape == (1797,) and y.dtype == torch.long
        assert x.min() >= 0 and x.max() <= 1
    x8, y8 = D.load_digits(8)
    assert torch.allclose(x8 * 16, (x8 * 16).round())  # sixteenths, as in the original
    x8[:] = 0  # callers get copies, not the cache
    assert D.load_digits(8)[0].max() == 1
    a, _ = D.load_digits(16, _g(1))
    b, _ = D.load_digits(16, _g(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Unknown size 10; valid values are: 8, 16, 28, 32"):
        D.load_digits(10)


# --- Fashion-MNIST -------------------------------------------------------------------------------------------


def _fake_fmnist(folder, n=20, split="test", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    x = torch.randint(0, 256, (n, 28, 28), generator=_g(seed), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=_g(seed))
    img, lab = D.FMNIST_FILES[split]
    D.write_idx(folder / img, x)
    D.write_idx(folder / lab, y)
    return x, y


def test_fmnist_real_files():
    x, y = D.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.min() == 0 and y.max() == 9
    x[:] = 0  # the in-memory cache is not shared with callers
    assert D.load_fashion_mnist("test")[0].max() == 255
    for f, want in D.FMNIST_SHA256.items():
        if f.startswith("t10k"):
            assert D.sha256(D._find_split("test") / f) == want


def test_fmnist_fake_dir_roundtrip_and_corrupt(tmp_path):
    x, y = _fake_fmnist(tmp_path)
    xs, ys = D.load_fashion_mnist("test", root=tmp_path, check_sha=False)
    assert torch.equal(xs, x) and torch.equal(ys, y) and ys.dtype == torch.int64
    with pytest.raises(ValueError, match="corrupt: its SHA-256 is"):
        D.load_fashion_mnist("test", root=tmp_path)


def test_fmnist_rewritten_file_not_served_from_cache(tmp_path):
    _fake_fmnist(tmp_path, n=20)
    assert len(D.load_fashion_mnist("test", root=tmp_path, check_sha=False)[0]) == 20
    _fake_fmnist(tmp_path, n=7, seed=1)
    assert len(D.load_fashion_mnist("test", root=tmp_path, check_sha=False)[0]) == 7


def test_fmnist_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_NB_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(D, "FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        D.load_fashion_mnist("train")
    msg = str(e.value)
    for part in [
        "not found in",
        str(tmp_path / "data" / "fashion-mnist"),
        str(tmp_path / "nowhere"),
        "apt-get install dataset-fashion-mnist",
        "put the four .gz files in",
        "download=True",
    ]:
        assert part in msg
    assert msg.count(". ") == 0  # one sentence
    # only half of a split is as good as none
    (tmp_path / "data" / "fashion-mnist").mkdir(parents=True)
    D.write_idx(tmp_path / "data" / "fashion-mnist" / "train-images-idx3-ubyte.gz", torch.zeros(2, 28, 28))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte.gz"):
        D.load_fashion_mnist("train")


def test_fmnist_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_NB_DATA", str(tmp_path))
    x_tv, _ = _fake_fmnist(tmp_path / "FashionMNIST" / "raw", n=5, seed=1)  # torchvision's layout
    assert torch.equal(D.load_fashion_mnist("test", check_sha=False)[0], x_tv)
    x_ours, _ = _fake_fmnist(tmp_path / "fashion-mnist", n=6, seed=2)  # data/fashion-mnist wins
    assert torch.equal(D.load_fashion_mnist("test", check_sha=False)[0], x_ours)
    assert D.fmnist_dirs()[-1] == D.FMNIST_SYSTEM_DIR
    assert D.fmnist_dirs(tmp_path / "x") == [tmp_path / "x"]


def test_read_idx_bad_files(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"")
    import gzip

    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        D.read_idx(tmp_path / "b.gz")  # float IDX, not bytes
    with gzip.open(tmp_path / "c.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match=r"corrupt: its header says shape \(5,\)"):
        D.read_idx(tmp_path / "c.gz")
    D.write_idx(tmp_path / "d", torch.arange(6, dtype=torch.uint8).reshape(2, 3))  # uncompressed works too
    assert torch.equal(D.read_idx(tmp_path / "d"), torch.arange(6, dtype=torch.uint8).reshape(2, 3))


def test_to_float():
    x = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    f = D.to_float(x)
    assert f.shape == (1, 1, 1, 2) and f.dtype == torch.float32 and f.tolist() == [[[[0.0, 1.0]]]]
    assert D.to_float(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)).shape == (2, 3, 4, 4)
    with pytest.raises(TypeError, match="expects uint8 images, got dtype torch.float32"):
        D.to_float(f)
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        D.to_float(torch.zeros(5, dtype=torch.uint8))


# --- torchvision datasets from tiny files in torchvision's on-disk formats -------------------------------------
# torchvision verifies the md5 of the real release files; the fakes have other md5s, so each test points the
# dataset class's checksum list at the fakes' own md5s (monkeypatch, undone after the test).


def test_torchvision_mnist(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in [("train", 6), ("t10k", 4)]:
        D.write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.full((n, 28, 28), 255, dtype=torch.uint8))
        D.write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n, dtype=torch.uint8))
    ds = D.load_torchvision("mnist", "test", root=tmp_path)
    x, y = ds[3]
    assert len(ds) == 4 and x.shape == (1, 28, 28) and x.dtype == torch.float32 and x.max() == 1 and y == 3
    xs, ys = D.dataset_tensors(D.load_torchvision("mnist", "train", root=tmp_path))
    assert xs.shape == (6, 1, 28, 28) and ys.tolist() == list(range(6))


def test_torchvision_cifar10(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        entry = {"data": np.full((2, 3072), 10 * i, dtype=np.uint8), "labels": [i, i + 1]}
        (base / name).write_bytes(pickle.dumps(entry))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    with pytest.raises(FileNotFoundError, match="failed torchvision's checksum"):
        D.load_torchvision("cifar10", "train", root=tmp_path)  # real md5s: the fakes are rejected
    monkeypatch.setattr(CIFAR10, "train_list", [[n, _md5(base / n)] for n in names[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(base / "test_batch")]])
    monkeypatch.setattr(
        CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": _md5(base / "batches.meta")}
    )
    tr, te = D.load_torchvision("cifar10", "train", root=tmp_path), D.load_torchvision("cifar10", "test", root=tmp_path)
    assert len(tr) == 10 and len(te) == 2 and tr.classes[0] == "c0"
    x, y = te[1]
    assert (
        x.shape == (3, 32, 32)
        and x.dtype == torch.float32
        and torch.allclose(x, torch.full_like(x, 50 / 255))
        and y == 6
    )


def test_torchvision_svhn(tmp_path, monkeypatch):
    import scipy.io
    from torchvision.datasets import SVHN

    X = np.zeros((32, 32, 3, 3), dtype=np.uint8)
    X[..., 2] = 255
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": X, "y": np.array([[10], [1], [5]], dtype=np.uint8)})
    split_list = {k: list(v) for k, v in SVHN.split_list.items()}
    split_list["train"][2] = _md5(tmp_path / "train_32x32.mat")
    monkeypatch.setattr(SVHN, "split_list", split_list)
    ds = D.load_torchvision("svhn", "train", root=tmp_path)
    xs, ys = D.dataset_tensors(ds)
    assert xs.shape == (3, 3, 32, 32) and ys.tolist() == [0, 1, 5]  # label 10 means digit 0
    assert xs[2].max() == 1 and xs[:2].max() == 0
    with pytest.raises(FileNotFoundError, match="put test_32x32.mat there, or pass download=True"):
        D.load_torchvision("svhn", "test", root=tmp_path)


def test_torchvision_celeba(tmp_path, monkeypatch):
    from PIL import Image
    from torchvision.datasets import CelebA

    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    ids = [f"{i:06d}.jpg" for i in range(1, 5)]
    for i, f in enumerate(ids):
        Image.new("RGB", (178, 218), (60 * i, 0, 0)).save(base / "img_align_celeba" / f)
    rows = lambda vals: "".join(f"{f} {' '.join(map(str, v))}\n" for f, v in zip(ids, vals))
    attrs = [f"a{j}" for j in range(40)]
    files = {
        "list_eval_partition.txt": rows([[0], [0], [1], [2]]),
        "identity_CelebA.txt": rows([[7], [8], [9], [7]]),
        "list_bbox_celeba.txt": "4\nimage_id x_1 y_1 width height\n" + rows([[1, 2, 3, 4]] * 4),
        "list_landmarks_align_celeba.txt": "4\n" + " ".join(f"p{j}" for j in range(10)) + "\n" + rows([[1] * 10] * 4),
        "list_attr_celeba.txt": "4\n" + " ".join(attrs) + "\n" + rows([[1, -1] * 20] * 4),
    }
    for name, text in files.items():
        (base / name).write_text(text)
    monkeypatch.setattr(CelebA, "file_list", [("", _md5(base / n), n) for n in files])
    train = D.load_torchvision("celeba", "train", root=tmp_path)
    assert len(train) == 2 and len(D.load_torchvision("celeba", "all", root=tmp_path)) == 4
    x, attr = train[1]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert abs(x[0].mean().item() - 60 / 255) < 0.02 and attr.tolist()[:2] == [1, 0]


def test_torchvision_bad_args_and_missing(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'; valid values are: mnist, cifar10, svhn, celeba"):
        D.load_torchvision("imagenet", "train")
    with pytest.raises(ValueError, match="Unknown celeba split 'val'; valid values are: train, valid, test, all"):
        D.load_torchvision("celeba", "val")
    with pytest.raises(FileNotFoundError, match=r"mnist train was not found .*MNIST/raw/.*download=True"):
        D.load_torchvision("mnist", "train", root=tmp_path)


def test_dataset_tensors_subset():
    ds = list(zip(torch.arange(10.0)[:, None], torch.arange(10)))
    x, y = D.dataset_tensors(ds, 4, _g())
    assert x.shape == (4, 1) and torch.equal(x[:, 0].long(), y) and len(set(y.tolist())) == 4
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        D.dataset_tensors(ds, 0)


# --- OOD sets, dequantisation, batches ---------------------------------------------------------------------


def test_ood_sets():
    x = torch.rand(30, 1, 28, 28)
    a, b = D.ood_sets(x, 12, _g()), D.ood_sets(x, 12, _g())
    assert list(a) == list(D.OOD_SETS)
    for k in a:
        assert a[k].shape == (12, 1, 28, 28) and a[k].dtype == torch.float32 and torch.equal(a[k], b[k])
        assert a[k].min() >= 0 and a[k].max() <= 1
    flipped = a["fmnist_vflip"].flip(-2)
    assert all((flipped[i] == x).flatten(1).all(1).any() for i in range(12))
    avg = D.ood_sets(torch.ones(5, 1, 28, 28), 3)["average"]
    assert torch.equal(avg, torch.ones_like(avg))
    assert D.ood_sets(x.double(), 2)["uniform"].dtype == torch.float64
    with pytest.raises(ValueError, match="x_test must be float images"):
        D.ood_sets(torch.zeros(5, 28, 28, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match=r"\(N,1,28,28\).*torch.float32 \(5, 3, 28, 28\)"):
        D.ood_sets(torch.zeros(5, 3, 28, 28), 3)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        D.ood_sets(x, 0)


def test_dequantize():
    x = torch.arange(256.0).reshape(1, 1, 16, 16) / 255
    d = D.dequantize(x, _g())
    assert d.shape == x.shape and d.min() >= 0 and d.max() <= 1
    assert torch.equal((d * 256).floor(), (x * 255).round())
    assert torch.equal(d, D.dequantize(x, _g()))
    d2 = D.dequantize(torch.tensor([0.0, 1.0]), levels=2)
    assert (d2[0] < 0.5) and (d2[1] >= 0.5)
    with pytest.raises(TypeError, match="use to_float first"):
        D.dequantize(torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        D.dequantize(x, levels=0)


def test_batches():
    x = torch.arange(100.0)
    g1, g2 = _g(5), _g(5)
    it1, it2 = D.batches(x, 10, g1), D.batches(x, 10, g2)
    for _ in range(3):
        assert torch.equal(next(it1), next(it2))
    # exactly torch.randint(len(x), (batch_size,), generator=g)
    g3 = _g(7)
    want = x[torch.randint(100, (10,), generator=_g(7))]
    assert torch.equal(next(D.batches(x, 10, g3)), want)
    assert next(D.batches(x, 100)).shape == (100,)
    xb, yb = next(D.batches([x, x.long()], 4))
    assert torch.equal(xb.long(), yb)
    with pytest.raises(ValueError, match="batch_size 512 is larger than the 100 examples; use at most 100"):
        D.batches(x, 512)
    for bad in [0, -1, 1.5, None]:
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            D.batches(x, bad)
    with pytest.raises(ValueError, match="same length"):
        D.batches((x, x[:5]), 2)


@pytest.mark.parametrize("cut", [0.5, 0.9], ids=["half", "most"])
def test_fmnist_truncated_file_says_which_and_how_to_fix(tmp_path, cut):
    _fake_fmnist(tmp_path, n=50)
    img = tmp_path / D.FMNIST_FILES["test"][0]
    raw = img.read_bytes()
    img.write_bytes(raw[: int(len(raw) * cut)])  # a download or copy cut short
    with pytest.raises(ValueError) as err:
        D.load_fashion_mnist("test", root=tmp_path, check_sha=False)
    msg = str(err.value)
    assert f"{img} is truncated or corrupt" in msg and "download=True" in msg and "dataset-fashion-mnist" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


def test_read_idx_truncated_or_not_gzip(tmp_path):
    p = tmp_path / "x.gz"
    D.write_idx(p, torch.arange(200, dtype=torch.uint8).reshape(2, 100))
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"x.gz is truncated or corrupt \(.*\); get a good copy of it"):
        D.read_idx(p)
    p.write_bytes(b"definitely not gzip")
    with pytest.raises(ValueError, match="x.gz is truncated or corrupt"):
        D.read_idx(p)
