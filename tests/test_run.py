"""The papermill runner: listing, bad input, and a failing notebook reported by cell."""
import nbformat
import pytest

from ebm_nb.run import NotebookFailed, main, run_notebook


def _paper(tmp_path, cells):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("scale = 'smoke'\nout_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    (tmp_path / "papers" / "demo").mkdir(parents=True)
    path = tmp_path / "papers" / "demo" / "t.ipynb"
    nbformat.write(nb, path)
    return path


def test_failing_notebook_names_cell(tmp_path, capsys):
    path = _paper(tmp_path, ["x = 1", "raise ValueError('boom')"])
    with pytest.raises(NotebookFailed, match=r"t.ipynb failed in code cell 3 \(`raise ValueError\(.boom.\)`\) with ValueError: boom"):
        run_notebook(path, "smoke", runs_dir=tmp_path / "runs")
    rc = main(["--papers-dir", str(tmp_path / "papers"), "--scale", "smoke", "--runs-dir", str(tmp_path / "runs")])
    assert rc == 1 and "FAILED" in capsys.readouterr().out


def test_list_and_bad_input(tmp_path, capsys):
    _paper(tmp_path, ["print(scale)"])
    papers = str(tmp_path / "papers")
    assert main(["--papers-dir", papers, "--list"]) == 0
    assert "demo/t.ipynb" in capsys.readouterr().out
    assert main(["--papers-dir", papers, "--scale", "huge"]) == 2
    assert "valid values are: smoke, quick, gpu, paper" in capsys.readouterr().err
    assert main(["--papers-dir", papers, "--paper", "nope"]) == 2
    with pytest.raises(ValueError, match="has no parameter"):
        run_notebook(tmp_path / "papers" / "demo" / "t.ipynb", "smoke", {"stepz": 3}, runs_dir=tmp_path / "runs")


def test_runs_and_passes_parameters(tmp_path):
    path = _paper(tmp_path, ["assert scale == 'quick'"])
    row = run_notebook(path, "quick", runs_dir=tmp_path / "runs")
    assert row["status"] == "ok" and (tmp_path / "runs" / "demo" / "t-quick.ipynb").exists()
