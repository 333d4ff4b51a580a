"""Write a notebook from a plain text file of cells, or dump a notebook back to that text.

Authoring helper (not part of the package). Cells start with a marker line:
  `# %%`             a code cell
  `# %% md`          a markdown cell (the following lines are the markdown, unprefixed)
  `# %% parameters`  a code cell tagged `parameters` for papermill; any words after `# %%` (other than `md`)
                     are the cell's tags (`# %% checks`, `# %% hide export`), so a dump and rebuild keeps them
Usage: python tools/pct2nb.py SRC.txt DEST.ipynb   |   python tools/pct2nb.py --dump NB.ipynb
"""

import sys
import nbformat


def parse(text):
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        src = "\n".join(lines).strip("\n")
        if kind == "md":
            cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            c = nbformat.v4.new_code_cell(src)
            if kind != "code":
                c.metadata["tags"] = kind.split()
            cells.append(c)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = (line[4:].strip() or "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(src, dest):
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(open(src).read())
    try:
        old = {(c.cell_type, c.source): c.id for c in nbformat.read(dest, as_version=4).cells}
    except FileNotFoundError:
        old = {}
    for c in nb.cells:  # keep the ids of unchanged cells so diffs show only what changed
        if (c.cell_type, c.source) in old:
            c.id = old.pop((c.cell_type, c.source))
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    nbformat.validate(nb)
    nbformat.write(nb, dest)
    print(f"wrote {dest}: {len(nb.cells)} cells")


def dump(path):
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        tags = "md" if c.cell_type == "markdown" else " ".join(c.metadata.get("tags", []))
        print(f"# %% {tags}".rstrip())
        print(c.source)


if __name__ == "__main__":
    if sys.argv[1] == "--dump":
        dump(sys.argv[2])
    else:
        build(sys.argv[1], sys.argv[2])
