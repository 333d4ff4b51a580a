"""Edge cases of ebm_nb.plots: bad shapes fail with one clear ValueError, saving creates folders and is atomic,
figures are closed only when this module created them, the style never leaks into global rcParams."""

import math
import os
import subprocess
import sys

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from ebm_nb.plots import (
    chain_strip,
    energy_heatmap,
    grid_energy,
    heatmap_row,
    image_grid,
    ood_histograms,
    panel,
    sample_grid,
    save_fig,
    scatter2d,
    set_style,
    style_rc,
    training_curves,
)

gauss = lambda x: (x**2).sum(1) / 2
HIST = [{"iter": i, "loss": 1.0 / (i + 1), "gap": float(i)} for i in range(10)]


def no_tmp(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --- bad shapes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (4, 8, 8), (4, 2, 8, 8), (0, 1, 8, 8), (2, 1, 1, 8, 8)])
def test_sample_grid_bad_shape(shape):
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\).*got shape"):
        sample_grid(torch.rand(shape))


@pytest.mark.parametrize("nrow", [0, -1, 2.5, True])
def test_sample_grid_bad_nrow(nrow):
    with pytest.raises(ValueError, match="nrow must be a positive integer"):
        sample_grid(torch.rand(4, 1, 4, 4), nrow=nrow)


@pytest.mark.parametrize("chain", [torch.rand(3, 2, 4, 4), torch.rand(3, 2, 2, 4, 4), torch.rand(0, 2, 1, 4, 4)])
def test_chain_strip_bad_shape(chain):
    with pytest.raises(ValueError, match=r"chain must be images of shape \(T, N, C, H, W\)"):
        chain_strip(chain)


def test_chain_strip_bad_list():
    with pytest.raises(ValueError, match="same shape"):
        chain_strip([torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4)])
    with pytest.raises(ValueError, match="empty list"):
        chain_strip([])


def test_chain_strip_bad_every_and_energies():
    chain = torch.rand(5, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        chain_strip(chain, every=0)
    with pytest.raises(ValueError, match=r"energies must have shape \(T, N\) = \(5, 2\).*got shape \(2, 5\)"):
        chain_strip(chain, energies=torch.rand(2, 5))


@pytest.mark.parametrize("fn", [scatter2d, lambda x: energy_heatmap(gauss, n=8, samples=x)])
@pytest.mark.parametrize("shape", [(10,), (10, 3), (2, 5, 2)])
def test_points_bad_shape(fn, shape):
    with pytest.raises(ValueError, match=r"shape \(N, 2\), got shape"):
        fn(np.zeros(shape))


def test_energy_fn_bad_output():
    with pytest.raises(ValueError, match=r"one energy per point, shape \(N,\)"):
        energy_heatmap(lambda x: x, n=8)
    with pytest.raises(ValueError, match="no finite energy"):
        energy_heatmap(lambda x: torch.full((len(x),), float("nan")), n=8)
    with pytest.raises(ValueError, match="bound must be a positive number"):
        energy_heatmap(gauss, bound=0, n=8)


def test_heatmap_row_bad_args():
    with pytest.raises(ValueError, match="non-empty list of energy functions"):
        heatmap_row(gauss)
    with pytest.raises(ValueError, match="non-empty list"):
        heatmap_row([])
    with pytest.raises(ValueError, match=r"titles must have one entry per function \(2\), got 1"):
        heatmap_row([gauss, gauss], ["a"], n=8)
    with pytest.raises(ValueError, match="one per function"):
        heatmap_row([gauss, gauss], samples=[np.zeros((3, 2))], n=8)


@pytest.mark.parametrize(
    "history, match",
    [
        ([], "non-empty list of dicts"),
        ({"iter": 1}, "non-empty list of dicts"),
        ([{"loss": 1.0}], "'iter' key"),
        ([{"iter": 0, "note": "x"}], "no numeric values"),
    ],
)
def test_training_curves_bad_history(history, match):
    with pytest.raises(ValueError, match=match):
        training_curves(history)


def test_training_curves_bad_key_and_smooth():
    with pytest.raises(ValueError, match="Unknown history key 'los'; valid values are: loss, gap"):
        training_curves(HIST, keys=["los"])
    for smooth in (1, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"smooth must be in \[0, 1\)"):
            training_curves(HIST, smooth=smooth)


@pytest.mark.parametrize(
    "scores, match",
    [
        ({}, "non-empty dict"),
        ([1, 2], "non-empty dict"),
        ({"a": np.zeros((3, 4))}, "one score per sample"),
        ({"a": [np.inf, np.nan]}, "no finite value"),
    ],
)
def test_ood_histograms_bad(scores, match):
    with pytest.raises(ValueError, match=match):
        ood_histograms(scores)


def test_panel_bad_n():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        panel(0)


# --- saving ---------------------------------------------------------------------------------------------------


def test_save_creates_folders_atomically(tmp_path):
    path = tmp_path / "a" / "b" / "grid.png"
    sample_grid(torch.rand(4, 3, 4, 4), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and no_tmp(tmp_path)


@pytest.mark.parametrize("suffix", [".pdf", ".svg"])
def test_save_other_formats(tmp_path, suffix):
    p = save_fig(scatter2d(np.zeros((3, 2))), tmp_path / f"x{suffix}")
    assert p.stat().st_size > 0 and no_tmp(tmp_path)


def test_save_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"figure format.*valid values are: png, pdf, svg"):
        scatter2d(np.zeros((3, 2)), tmp_path / "x.jpg")
    assert not list(tmp_path.iterdir())


def test_failed_save_keeps_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    fig = scatter2d(np.zeros((3, 2)))

    def boom(fname, **kw):
        open(fname, "wb").write(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_fig(fig, path)
    assert path.read_bytes() == b"old" and no_tmp(tmp_path)


def test_every_function_saves(tmp_path):
    chain = torch.rand(4, 2, 1, 4, 4)
    figs = {
        "grid": sample_grid(chain[0], tmp_path / "grid.png"),
        "chain": chain_strip(chain, tmp_path / "chain.png", energies=torch.rand(4, 2)),
        "heat": energy_heatmap(gauss, n=8, path=tmp_path / "heat.png"),
        "row": heatmap_row([gauss, gauss], n=8, path=tmp_path / "row.png"),
        "curves": training_curves(HIST, path=tmp_path / "curves.png"),
        "ood": ood_histograms({"in": np.random.randn(50), "out": np.random.randn(50) + 2}, tmp_path / "ood.png"),
        "scatter": scatter2d(np.random.randn(50, 2), tmp_path / "scatter.png"),
    }
    n_axes = {"grid": 1, "chain": 2, "heat": 1, "row": 2, "curves": 2, "ood": 1, "scatter": 1}
    for name, fig in figs.items():
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert len(fig.axes) == n_axes[name], name
    assert no_tmp(tmp_path)


# --- closing and style ----------------------------------------------------------------------------------------


def test_created_figures_closed_given_axes_kept():
    fig = sample_grid(torch.rand(2, 1, 4, 4))
    assert not plt.fignum_exists(fig.number)
    fig = sample_grid(torch.rand(2, 1, 4, 4), close=False)
    assert plt.fignum_exists(fig.number)
    plt.close(fig)
    mine, ax = plt.subplots()
    assert energy_heatmap(gauss, n=8, ax=ax) is mine and scatter2d(np.zeros((2, 2)), ax=ax) is mine
    assert plt.fignum_exists(mine.number) and len(ax.images) == 1
    plt.close(mine)


def test_save_fig_closes_only_when_asked(tmp_path):
    fig, _ = panel(2)
    save_fig(fig, tmp_path / "a.png")
    assert plt.fignum_exists(fig.number)
    save_fig(fig, tmp_path / "b.png", close=True)
    assert not plt.fignum_exists(fig.number)


def test_closed_figure_still_saves(tmp_path):
    fig = scatter2d(np.zeros((3, 2)))
    assert not plt.fignum_exists(fig.number)
    save_fig(fig, tmp_path / "again.png")
    assert (tmp_path / "again.png").exists()


def test_style_does_not_leak_but_set_style_applies():
    before = dict(mpl.rcParams)
    training_curves(HIST)
    sample_grid(torch.rand(2, 1, 4, 4))
    assert dict(mpl.rcParams) == before
    with mpl.rc_context():
        set_style()
        assert mpl.rcParams["image.cmap"] == style_rc()["image.cmap"] == "viridis"
        assert mpl.rcParams["savefig.dpi"] == 150


def test_saved_png_is_150_dpi(tmp_path):
    from PIL import Image

    scatter2d(np.zeros((3, 2)), tmp_path / "x.png")
    dpi = Image.open(tmp_path / "x.png").info.get("dpi")
    assert dpi is not None and round(dpi[0]) == 150


def test_headless_script_gets_agg():
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run(
        [sys.executable, "-c", "import ebm_nb.plots, matplotlib; print(matplotlib.get_backend())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().lower() == "agg"


# --- content --------------------------------------------------------------------------------------------------


def test_image_grid_layout():
    x = torch.arange(3).float().view(3, 1, 1, 1) / 2
    g = image_grid(x, nrow=2, pad=1, pad_value=1.0)
    assert g.shape == (2 * 2 + 1, 2 * 2 + 1, 1)
    assert g[1, 1, 0] == 0 and g[1, 3, 0] == 0.5 and g[3, 1, 0] == 1.0 and g[3, 3, 0] == 1.0  # last cell is padding
    assert image_grid(torch.full((1, 3, 2, 2), 7.0)).max() == 1.0  # clipped to [0, 1]


def test_heatmap_density_and_energy():
    fig = energy_heatmap(gauss, n=50, bound=5.0)
    p = fig.axes[0].images[0].get_array()
    assert abs(p.sum() * (10 / 50) ** 2 - 1) < 1e-9 and abs(p.max() - 1 / (2 * math.pi)) < 0.01
    E = energy_heatmap(gauss, n=50, bound=5.0, density=False).axes[0].images[0].get_array()
    assert E.min() >= 0 and abs(E.max() - 0.5 * 2 * 4.9**2) < 1e-4


def test_grid_energy_orientation_and_modules():
    E = grid_energy(lambda x: x[:, 0] + 10 * x[:, 1], bound=1.0, n=4)
    assert E[0, -1] > E[0, 0] and E[-1, 0] > E[0, -1]  # columns are x, rows are y (origin lower)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    assert grid_energy(net, n=6).shape == (6, 6)  # (N, 1) output accepted
    assert not any(p.grad is not None for p in net.parameters())


def test_chain_every_keeps_last_step():
    fig = chain_strip(torch.rand(7, 2, 1, 4, 4), every=4)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "4", "6"]


def test_training_curves_missing_values_and_smoothing():
    hist = [{"iter": i, "loss": 2.0, **({"lr": 0.1} if i % 2 else {})} for i in range(6)]
    fig = training_curves(hist, smooth=0.9)
    smoothed = fig.axes[0].lines[1].get_ydata()
    assert np.allclose(smoothed, 2.0)  # a debiased EMA of a constant is that constant from the first point
    assert np.isnan(fig.axes[1].lines[0].get_ydata()[0])


def test_ood_drops_nonfinite_with_warning():
    with pytest.warns(UserWarning, match="dropped 2 non-finite of 5"):
        fig = ood_histograms({"in": [0.0, 1.0, 2.0, np.inf, np.nan], "out": torch.randn(10, 1)})
    assert len(fig.axes[0].get_legend().get_texts()) == 2


# --- reading a figure: shared colour scale, titles, reference lines, legends that do not hide the data ----------


def test_heatmap_row_shared_colorbar_and_title():
    fns = [gauss, lambda x: gauss(x) / 4]  # the second is much flatter: a lower peak density
    fig = heatmap_row(fns, ["sharp", "flat"], n=20, colorbar=True, title="two energies (smoke scale)")
    panels, bar = fig.axes[:2], fig.axes[2:]
    assert len(bar) == 1 and bar[0].get_ylabel() == "density"
    clims = {ax.images[0].get_clim() for ax in panels}
    hi = max(ax.images[0].get_array().max() for ax in panels)
    assert len(clims) == 1 and np.isclose(clims.pop()[1], hi)  # one scale, up to the highest panel
    assert fig.get_suptitle() == "two energies (smoke scale)"
    E = heatmap_row(fns, n=10, colorbar=True, density=False)
    assert E.axes[-1].get_ylabel() == "energy"


def test_heatmap_row_default_has_no_colorbar_or_title():
    fig = heatmap_row([gauss, gauss], n=8)
    assert len(fig.axes) == 2 and fig.get_suptitle() == ""


def test_training_curves_reference_lines_and_title():
    fig = training_curves(HIST, refs={"loss": (0.068, "paper"), "gap": 3}, title="toy run (quick scale)")
    loss_ax, gap_ax = fig.axes
    assert [l.get_ydata()[0] for l in loss_ax.lines[1:]] == [0.068] and loss_ax.get_legend().get_texts()[
        0
    ].get_text() == "paper"
    assert gap_ax.get_legend().get_texts()[0].get_text() == "reference"
    assert loss_ax.get_legend().get_frame().get_alpha() == 0.8 and fig.get_suptitle() == "toy run (quick scale)"
    assert training_curves(HIST).axes[0].get_legend() is None  # no refs, no legend


@pytest.mark.parametrize(
    "refs, match",
    [
        ({"los": 1.0}, "refs key.*'los'; valid values are: loss, gap"),
        ({"loss": "x"}, "finite number"),
        ({"loss": (np.nan, "paper")}, "finite number"),
        ([0.1], "must be a dict"),
    ],
)
def test_training_curves_bad_refs(refs, match):
    with pytest.raises(ValueError, match=match):
        training_curves(HIST, refs=refs)


def test_ood_legend_is_framed_and_placed_best():
    fig = ood_histograms({"in": np.random.randn(50), "out": np.random.randn(50) + 2})
    leg = fig.axes[0].get_legend()
    assert leg._loc == 0 and leg.get_frame_on() and leg.get_frame().get_alpha() == 0.8  # loc="best", semi-opaque frame
