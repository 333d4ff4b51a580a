"""Every library notebook through nbdev's test runner; every paper notebook at its smoke defaults through papermill;
the package's one version number."""
import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ebm_nb.run import find_notebooks, run_notebook

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
PAPERS = find_notebooks("all", ROOT / "nbs" / "papers")


@pytest.mark.parametrize("nb", LIBRARY, ids=lambda p: p.stem)
def test_library_notebook(nb):
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
