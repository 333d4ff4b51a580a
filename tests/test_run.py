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
    assert "valid values are: smoke, quick, cpu, gpu, paper" in capsys.readouterr().err
    assert main(["--papers-dir", papers, "--paper", "nope"]) == 2
    with pytest.raises(ValueError, match="has no parameter"):
        run_notebook(tmp_path / "papers" / "demo" / "t.ipynb", "smoke", {"stepz": 3}, runs_dir=tmp_path / "runs")


def test_runs_and_passes_parameters(tmp_path):
    path = _paper(tmp_path, ["assert scale == 'quick'"])
    row = run_notebook(path, "quick", runs_dir=tmp_path / "runs")
    assert row["status"] == "ok" and (tmp_path / "runs" / "demo" / "t-quick.ipynb").exists()


def _demo(tmp_path, params="scale = 'smoke'\nseed = 0\ndevice = 'auto'\nout_dir = None", name="t", paper="demo",
          purpose="> Print the scale.", body=("print(scale)",)):
    "A paper notebook under tmp_path/papers/<paper>/<name>.ipynb with a parameters cell and a purpose line."
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# Title of {name}\n\n{purpose}\n\nMore prose."), p]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    (tmp_path / "papers" / paper).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "papers" / paper / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _args(tmp_path, *rest):
    return ["--papers-dir", str(tmp_path / "papers"), "--runs-dir", str(tmp_path / "runs"), *rest]


def test_scale_given_twice_must_agree(tmp_path, capsys):
    _demo(tmp_path)
    assert main(_args(tmp_path, "--scale", "smoke", "-p", "scale", "quick")) == 2
    err = capsys.readouterr().err
    assert "--scale 'smoke'" in err and "-p scale 'quick'" in err and not (tmp_path / "runs").exists()
    assert main(_args(tmp_path, "--scale", "smoke", "-p", "scale", "'smoke'")) == 0  # the same value twice is fine


def test_p_scale_alone_is_the_scale_everywhere(tmp_path, capsys):
    path = _demo(tmp_path)
    assert main(_args(tmp_path, "-p", "scale", "smoke")) == 0
    out = capsys.readouterr().out
    assert "demo/t.ipynb at scale smoke" in out and "| demo/t.ipynb | smoke | ok |" in out
    assert [p.name for p in (tmp_path / "runs" / "demo").iterdir()] == ["t-smoke.ipynb"]
    with pytest.raises(ValueError, match="scale 'quick' and parameters scale 'smoke' disagree"):
        run_notebook(path, "quick", {"scale": "smoke"}, runs_dir=tmp_path / "runs")


@pytest.mark.parametrize("value", ["1.5", "-1", "abc", "True"])
def test_seed_is_checked_before_any_work(tmp_path, capsys, value):
    _demo(tmp_path, body=("import numpy as np; np.random.default_rng(seed)",))
    assert main(_args(tmp_path, "--scale", "smoke", "-p", "seed", value)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed must be a non-negative integer, got" in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name, value, message", [
    ("device", "gpu", "Unknown device 'gpu'; valid values are: auto, cpu, cuda, cuda:N."),
    ("device", "3", "Unknown device 3; valid values are: auto, cpu, cuda, cuda:N."),
    ("scale", "huge", "Unknown scale 'huge'; valid values are: smoke, quick, cpu, gpu, paper."),
    ("out_dir", "3", "out_dir must be a folder path (a string) or None, got 3."),
])
def test_bad_parameters_fail_before_work(tmp_path, capsys, name, value, message):
    _demo(tmp_path)
    assert main(_args(tmp_path, "-p", name, value)) == 2
    assert capsys.readouterr().err == f"error: {message}\n" and not (tmp_path / "runs").exists()


def test_unknown_parameter_fails_before_any_notebook_runs(tmp_path, capsys):
    _demo(tmp_path, name="a", params="scale = 'smoke'\ntaus = [0.1]")
    _demo(tmp_path, name="b", params="scale = 'smoke'")
    assert main(_args(tmp_path, "-p", "taus", "[0.0]")) == 2
    assert "b.ipynb has no parameter(s) ['taus']" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main(_args(tmp_path, "-p", "seed", "1", "-p", "seed", "2")) == 2
    assert "-p seed is given twice" in capsys.readouterr().err


def test_no_notebook_matched_names_value_and_lists_notebooks(tmp_path, capsys):
    _demo(tmp_path, name="a")
    _demo(tmp_path, name="b", paper="other")
    assert main(_args(tmp_path, "--notebook", "nomatch")) == 2
    err = capsys.readouterr().err
    assert "'nomatch'" in err and "demo/a.ipynb, other/b.ipynb" in err
    assert main(_args(tmp_path, "--paper", "demo", "--notebook", "b")) == 2
    assert "no notebook of paper 'demo' has 'b' in its name; its notebooks are: demo/a.ipynb." in capsys.readouterr().err


def test_list_purpose_wall_time_and_benchmarks_apart(tmp_path, capsys):
    import json
    _demo(tmp_path, name="t", body=("write_results(out_dir / 'tab', rows, meta)", "write_results(out_dir / f'other_{scale}', rows, meta)"))
    _demo(tmp_path, name="bench", paper="benchmarks", purpose="> Time things.")
    _demo(tmp_path, name="plain", purpose="")
    figs = tmp_path / "figures"
    (figs / "demo").mkdir(parents=True); (figs / "_smoke" / "demo").mkdir(parents=True)
    def put(path, scale, wall, date):  # each table names the notebook that wrote it
        meta = {"scale": scale, "wall_time_s": wall, "date": date, "notebook": "demo/t.ipynb"}
        path.write_text(json.dumps({"meta": meta, "rows": [{"a": 1}]}))
    put(figs / "demo" / "tab.json", "quick", 1569.6, "2026-11-30 01:00:00")
    put(figs / "demo" / "other_gpu.json", "gpu", 300.0, "2026-11-29 01:00:00")
    put(figs / "demo" / "other_quick.json", "quick", 100.0, "2026-11-29 01:00:00")  # older quick run: not the last
    put(figs / "_smoke" / "demo" / "tab.json", "smoke", 3.0, "2026-12-01 01:00:00")  # smoke runs are not committed
    assert main(_args(tmp_path, "--figures-dir", str(figs), "--list")) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    i = lines.index("demo/t.ipynb: Print the scale.")
    assert "last run: quick 26 min, gpu 300 s" in lines[i + 1] and "parameters:" in lines[i + 2]
    assert "demo/plain.ipynb: Title of plain" in out and "smoke" not in "".join(l for l in lines if "last run" in l)
    papers, bench = out.index("Paper notebooks"), out.index("Benchmarks")
    assert papers < out.index("demo/t.ipynb") < bench < out.index("benchmarks/bench.ipynb: Time things.")
    assert "benchmarks/bench.ipynb" not in out[:bench] and "no committed run" in out[bench:]


def test_executed_copy_beside_the_results(tmp_path, capsys):
    "Above smoke, `ebm-nb` puts the executed notebook beside its tables, without this machine's absolute paths."
    _demo(tmp_path, body=("print(scale)", "import os; print(os.getcwd())"))
    out = tmp_path / "out"
    assert main(_args(tmp_path, "--scale", "quick", "-p", "out_dir", str(out))) == 0
    copy = out / "t.ipynb"
    text = copy.read_text()
    assert copy.exists() and str(tmp_path) not in text and "<runs>" in text, text[:2000]
    assert main(_args(tmp_path, "--scale", "smoke", "-p", "out_dir", str(tmp_path / "smoke"))) == 0
    assert not (tmp_path / "smoke").exists()  # smoke results are not committed, nor is their notebook
