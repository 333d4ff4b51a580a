"""Notebooks as a researcher runs them, and the package's one version number.

- Every library notebook, all cells in a fresh kernel (what JupyterLab's Run All does: no nbdev flags), on a
  CPU, in a copy of the checkout; Run All must leave every file of that copy as it was.
- Notebooks whose Run All is too long for CI (`RUN_ALL_TOO_LONG`) go through nbdev's runner instead, which
  skips the cells flagged with `tst_flags`.
- Every paper notebook at its smoke defaults through papermill, writing to a temporary out_dir.
- One paper notebook exactly as pressing run leaves it (no parameters) in a copy under git: the checkout stays clean.
"""
import ast
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ebm_nb.run import find_notebooks, run_notebook

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
PAPERS = find_notebooks("all", ROOT / "nbs" / "papers")
CELL_TIMEOUT = 900  # seconds per cell: generous for two shared CPU cores

# Run All executes these notebooks' `slow`/`notest` cells too, which CI cannot afford; nbdev-test skips them.
RUN_ALL_TOO_LONG: dict[str, str] = {}   # none today: 09 retrains only with retrain=True / EBM_NB_RETRAIN=1


def _checkout_files(root=ROOT) -> list[str]:
    "Paths (relative to `root`) of the tracked and the untracked-but-not-ignored files of the checkout."
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({f for f in out.split("\0") if f and (root / f).is_file()})


def _copy_checkout(dst: Path) -> Path:
    "Copy the checkout's files (working-tree state, without ignored ones such as .venv and data/) to `dst`."
    for f in _checkout_files():
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    return dst


def _hashes(root: Path, files) -> dict:
    return {f: hashlib.sha1((root / f).read_bytes()).hexdigest() if (root / f).exists() else None for f in files}


def _kernel_env(monkeypatch, checkout: Path):
    "The kernel nbclient starts inherits this process's environment: import ebm_nb from `checkout`, on a CPU."
    monkeypatch.setenv("PYTHONPATH", str(checkout))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("EBM_NB_DATA", os.environ.get("EBM_NB_DATA") or str(ROOT / "data"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel's inline backend, as in JupyterLab


def _run_all(nb_path: Path):
    "Execute every cell of `nb_path` in a fresh python3 kernel started in its folder; raise on the first error."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(nb_path, as_version=4)
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    except CellExecutionError as e:  # the cell's source and its traceback, without terminal colours
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        raise AssertionError(f"{nb_path.name}: {plain}") from None
    return nb


@pytest.mark.parametrize("nb", [p for p in LIBRARY if p.stem not in RUN_ALL_TOO_LONG], ids=lambda p: p.stem)
def test_library_notebook_run_all(nb, tmp_path, monkeypatch):
    checkout = _copy_checkout(tmp_path / "checkout")
    _kernel_env(monkeypatch, checkout)
    files = _checkout_files()
    before = _hashes(checkout, files)
    _run_all(checkout / nb.relative_to(ROOT))
    changed = [f for f, h in _hashes(checkout, files).items() if h != before[f]]
    assert not changed, f"Run All of {nb.name} changed files of the checkout: {changed}"


@pytest.mark.parametrize("nb", [p for p in LIBRARY if p.stem in RUN_ALL_TOO_LONG], ids=lambda p: p.stem)
def test_library_notebook_nbdev(nb):
    nbdev_test = Path(sys.executable).with_name("nbdev-test")
    res = subprocess.run([str(nbdev_test), str(nb.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{nb.name} failed under nbdev-test:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"


@pytest.mark.parametrize("nb", PAPERS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_notebook(nb, tmp_path):
    out = tmp_path / "figures"
    row = run_notebook(nb, scale="smoke", parameters={"out_dir": str(out)}, runs_dir=tmp_path / "runs")
    assert row["status"] == "ok"
    written = list(out.rglob("*"))
    assert any(p.suffix == ".png" for p in written), f"{nb.name} wrote no figure under out_dir"
    for js in (p for p in written if p.suffix == ".json"):
        table = json.loads(js.read_text())
        assert table["rows"] and table["meta"]["scale"] == "smoke", f"{js.name} lacks rows or the scale"


def _git(repo: Path, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@localhost",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True).stdout


def test_pressing_run_leaves_the_checkout_clean(tmp_path, monkeypatch):
    "A paper notebook at its defaults (what pressing run in JupyterLab does) writes only git-ignored files."
    nb = ROOT / "nbs" / "papers" / "toy" / "energy_landscapes.ipynb"
    checkout = _copy_checkout(tmp_path / "checkout")
    _git(checkout, "init", "-q")
    _git(checkout, "add", "-A")
    _git(checkout, "commit", "-q", "--no-verify", "-m", "checkout as tested")
    _kernel_env(monkeypatch, checkout)
    monkeypatch.setenv("EBM_NB_QUIET", "1")
    _run_all(checkout / nb.relative_to(ROOT))
    status = _git(checkout, "status", "--porcelain", "--untracked-files=all").splitlines()
    tracked = [s for s in status if not s.startswith("??")]
    new = [s[3:] for s in status if s.startswith("??")]
    assert not tracked, f"running {nb.name} at its defaults changed tracked files: {tracked}"
    assert not new, f"running {nb.name} at its defaults wrote files git does not ignore: {new}"


def _init_version() -> str:
    "The `__version__` literal in ebm_nb/__init__.py, read the way setuptools' `attr:` reads it (without importing)."
    tree = ast.parse((ROOT / "ebm_nb" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("ebm_nb/__init__.py has no __version__ = '...' line")


def test_one_version_number():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    import ebm_nb
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    if "version" in project:
        declared = project["version"]
    else:
        assert "version" in project.get("dynamic", []), "pyproject.toml has neither [project] version nor a dynamic one"
        attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
        assert attr == "ebm_nb.__version__", f"the dynamic version comes from {attr!r}, not ebm_nb.__version__"
        declared = _init_version()
    assert ebm_nb.__version__ == declared, f"ebm_nb.__version__ is {ebm_nb.__version__}, pyproject.toml says {declared}"
    # nbdev 3 reads the version only from __init__.py; a [tool.nbdev] version would be a second number that drifts.
    stale = pyproject["tool"].get("nbdev", {}).get("version")
    assert stale in (None, declared), f"[tool.nbdev] version = {stale!r} disagrees with {declared}; remove it"


def _installed_from_checkout(dist) -> bool:
    "A distribution of ebm-nb built from this checkout: its direct_url.json names it, or its metadata lies in it."
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    return url == ROOT.as_uri() or Path(dist.locate_file("")).resolve().is_relative_to(ROOT)


def test_installed_version():
    "importlib.metadata sees the version of ebm_nb/__init__.py (an install from before a version bump is stale)."
    import ebm_nb
    ours = [d for d in importlib.metadata.distributions(name="ebm-nb") if _installed_from_checkout(d)]
    if not ours: pytest.skip("ebm-nb is not installed from this checkout (pip install -e .)")
    found = {str(d.locate_file("")): d.version for d in importlib.metadata.distributions(name="ebm-nb")}
    assert importlib.metadata.version("ebm-nb") == ebm_nb.__version__ and all(
        d.version == ebm_nb.__version__ for d in ours), (
        f"ebm_nb.__version__ is {ebm_nb.__version__} but the installed metadata says {found}: reinstall (make env)")
