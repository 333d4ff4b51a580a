"""Recompute the paper's claims of a committed result file with the notebook's own `checks` cell.

A paper notebook keeps its claims in one code cell tagged `checks`: a pure function `checks(rows, meta) -> list[dict]`
of `ebm_nb.results.check` records. This script runs that cell's source in a fresh namespace, calls `checks` on the
rows and meta of a committed JSON and rewrites the JSON, CSV and .md through `ebm_nb.results.write_results`: the rows
and the original meta (commit, wall time, date) stay as they were; only `meta.checks` and the .md's verdict lines
are new. The .md keeps its notes.

Usage (from the repository root, with PYTHONPATH set to it):
  python tools/recheck.py NOTEBOOK.ipynb RESULT.json [RESULT.json ...]   rewrite each result's checks
  python tools/recheck.py --tag NOTEBOOK.ipynb                           tag the cell defining `def checks(`
"""

import json
import sys
from pathlib import Path

import nbformat

TAG = "checks"


def checks_cell(nb_path) -> str:
    "The source of the one code cell tagged `checks` in the notebook at `nb_path`."
    cells = [
        c
        for c in nbformat.read(nb_path, as_version=4).cells
        if c.cell_type == "code" and TAG in c.metadata.get("tags", [])
    ]
    if len(cells) != 1:
        raise ValueError(
            f"{nb_path} must have exactly one code cell tagged {TAG!r}, found {len(cells)}; "
            f"tag it with: python tools/recheck.py --tag {nb_path}"
        )
    return cells[0].source


def load_checks(nb_path):
    "The `checks(rows, meta)` function of a notebook, from its tagged cell run in a fresh namespace."
    import numpy as np, pandas as pd
    from ebm_nb.results import check

    ns = {"check": check, "np": np, "pd": pd, "__name__": "checks_cell"}
    exec(compile(checks_cell(nb_path), f"{nb_path}:checks", "exec"), ns)
    if not callable(ns.get("checks")):
        raise ValueError(f"The {TAG!r} cell of {nb_path} defines no function `checks`.")
    return ns["checks"]


def md_notes(md_text: str) -> str:
    "The notes of a result .md written by `write_results`: what follows the table and any verdict lines."
    lines = md_text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rest = lines[end:]
    while rest and not rest[0].strip():
        rest = rest[1:]
    if rest and rest[0].startswith("Checks against the paper:"):  # verdicts of an earlier recheck: replaced
        rest = rest[1:]
        while rest and (rest[0].startswith("- ") or not rest[0].strip()):
            rest = rest[1:]
    return "\n".join(rest).strip()


def recheck(nb_path, json_path) -> list[dict]:
    "Rewrite `json_path` (and its .csv/.md) with `meta.checks` from the notebook's `checks` cell; return the checks."
    from ebm_nb.results import write_results

    json_path = Path(json_path)
    if json_path.suffix != ".json":
        raise ValueError(f"Give the result's .json file, got {str(json_path)!r}.")
    res = json.loads(json_path.read_text())
    rows, meta = res["rows"], {k: v for k, v in res["meta"].items() if k != "checks"}
    claims = load_checks(nb_path)(rows, meta)
    md = json_path.with_suffix(".md")
    notes = md_notes(md.read_text()) if md.exists() else ""
    write_results(json_path.with_suffix(""), rows, meta, notes, checks=claims)
    return claims


def tag(nb_path):
    "Tag the one code cell that defines `def checks(` with `checks` (pct2nb.py writes only the `parameters` tag)."
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "\ndef checks(" in "\n" + c.source]
    if len(cells) != 1:
        raise ValueError(f"{nb_path} must have exactly one code cell defining `def checks(`, found {len(cells)}.")
    for c in nb.cells:
        tags = [t for t in c.metadata.get("tags", []) if t != TAG]
        if c is cells[0]:
            tags.append(TAG)
        if tags:
            c.metadata["tags"] = tags
        else:
            c.metadata.pop("tags", None)
    nbformat.write(nb, nb_path)


def main(argv):
    if len(argv) == 2 and argv[0] == "--tag":
        tag(argv[1])
        print(f"tagged the checks cell of {argv[1]}")
        return
    if len(argv) < 2 or argv[0].startswith("-"):
        sys.exit(__doc__)
    for p in argv[1:]:
        claims = recheck(argv[0], p)
        from ebm_nb.results import VERDICTS, tally

        print(f"{p}: {tally(claims)}")
        for c in claims:
            print(f"  {VERDICTS[c['holds']]:12s}  {c['claim']}")


if __name__ == "__main__":
    main(sys.argv[1:])
