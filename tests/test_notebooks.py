"""Every library notebook through nbdev's test runner; every paper notebook at its smoke defaults through papermill."""
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
