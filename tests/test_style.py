"""The shape of the code, as the project's conventions ask (DESIGN.md): small exported cells, methods where their
class is, one way to run an experiment. `make lint` (ruff) checks line length, one statement per line and imports."""
import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))
PAPERS = sorted((ROOT / "nbs" / "papers").glob("*/*.ipynb"))


def _exported_sizes() -> dict:
    "`{(notebook, cell index): non-blank lines}` of every `#| export` cell, without the `#|` directives."
    sizes = {}
    for nb in LIBRARY:
        cells = json.loads(nb.read_text())["cells"]
        for i, c in enumerate(cells):
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            lines = src.splitlines()
            if c["cell_type"] != "code" or not any(line.strip().startswith("#| export") for line in lines):
                continue
            sizes[(nb.name, i)] = sum(1 for line in lines if line.strip() and not line.strip().startswith("#|"))
    return sizes


def test_exported_cells_are_small():
    sizes = _exported_sizes()
    assert sizes, "no exported cells found"
    big = {k: v for k, v in sizes.items() if v > 60}
    assert not big, f"exported cells over 60 lines (split them; a long class gets @patch cells): {big}"
    median = statistics.median(sizes.values())
    assert median <= 15, f"the median exported cell has {median} lines; keep it at 15 or fewer"


def test_methods_live_with_their_class():
    "No `Class.method = _function` after a class: a method is in the class body or a `@patch` cell."
    pattern = re.compile(r"^[A-Z]\w*\.\w+\s*=\s*_\w+\s*$", re.M)
    found = {p.name: pattern.findall(p.read_text()) for p in (ROOT / "ebm_nb").glob("*.py")}
    assert not {k: v for k, v in found.items() if v}, f"methods assigned after their class: {found}"


def test_paper_notebooks_run_their_protocol_through_run_protocol():
    "Every paper notebook (the benchmarks apart, which time code rather than train) runs its rows with run_protocol."
    trains = [p for p in PAPERS if p.parent.name != "benchmarks"]
    missing = [f"{p.parent.name}/{p.name}" for p in trains if "run_protocol" not in p.read_text()]
    assert not missing, f"paper notebooks that do not run their protocol through run_protocol: {missing}"
    stale = [f"{p.parent.name}/{p.name}" for p in PAPERS if "parallel_map" in p.read_text()]
    assert not stale, f"paper notebooks that still call parallel_map with positional jobs: {stale}"
