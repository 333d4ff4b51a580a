"""The results index: built from committed tables only, deterministic, and the committed one is current."""
import json
from pathlib import Path

from ebm_nb.report import build_index, load_tables
from ebm_nb.run import main

ROOT = Path(__file__).resolve().parents[1]
META = {"scale": "quick", "dataset": "8gaussians", "device": "cpu (x86_64, 2 threads)", "seed": 0, "commit": "abc1234",
        "wall_time_s": 1569.6, "date": "2026-11-30 01:39:29"}


def test_committed_index_is_current(capsys):
    assert main(["report", "--check"]) == 0, capsys.readouterr().err
    assert (ROOT / "figures" / "README.md").exists()


def _figures(tmp_path):
    figs = tmp_path / "figures"
    for d in ("gcd", "toy", "_smoke/gcd"): (figs / d).mkdir(parents=True)
    checks = [{"claim": "tau = 0 gives the lowest AUC", "paper": 0.707, "ours": 0.58, "holds": True, "note": ""},
              {"claim": "SW matches at tau = 0.1", "paper": 0.068, "ours": 0.6812345, "holds": False, "note": "fewer iterations"}]
    rows = [{"method": "DDPM", "sw": 0.77607453, "sw_std": 0.0052, "paper_sw": 0.967, "paper_sw_std": 0.005, "auc": float("nan")},
            {"method": "DxMI", "sw": 0.6812345, "sw_std": 0.01, "paper_sw": 0.068, "paper_sw_std": 0.001, "auc": 0.78}]
    (figs / "gcd" / "table1.json").write_text(json.dumps({"meta": {**META, "checks": checks}, "rows": rows}))
    (figs / "gcd" / "table1.png").write_bytes(b"")
    (figs / "gcd" / "table1_curves.png").write_bytes(b"")
    (figs / "toy" / "land.json").write_text(json.dumps({"meta": {**META, "wall_time_s": 125.4}, "rows": [{"toy": "rings", "sw2": 1.0692}]}))
    (figs / "toy" / "lonely.png").write_bytes(b"")
    (figs / "_smoke" / "gcd" / "smoky.json").write_text(json.dumps({"meta": {**META, "scale": "smoke"}, "rows": [{"x": 1}]}))
    (figs / "_smoke" / "gcd" / "smoky.png").write_bytes(b"")
    return figs


def test_builder_on_a_folder(tmp_path):
    figs = _figures(tmp_path)
    assert [(t["paper"], t["stem"]) for t in load_tables(figs)] == [("gcd", "table1"), ("toy", "land")]
    text = build_index(figs)
    assert "smoky" not in text                                                       # _smoke ignored
    assert "| [gcd/table1](#gcdtable1) | quick | cpu (x86_64, 2 threads) | 26 min | 1 of 2 hold, 1 fails |" in text
    assert "| [toy/land](#toyland) | quick | cpu (x86_64, 2 threads) | 125 s | none recorded |" in text
    assert "| method | sw | paper_sw | sw_std | paper_sw_std | auc |" in text            # paper_* beside ours
    assert "| DDPM | 0.7761 | 0.967 | 0.0052 | 0.005 |  |" in text                        # rounded, NaN blank
    assert "| yes | tau = 0 gives the lowest AUC | 0.707 | 0.58 |  |" in text
    assert "| NO | SW matches at tau = 0.1 | 0.068 | 0.6812 | fewer iterations |" in text
    assert text.count("No checks recorded.") == 1                                     # the table without checks
    assert "![table1.png](gcd/table1.png)" in text and "![table1_curves.png](gcd/table1_curves.png)" in text
    assert "### Figures without a table\n\n![lonely.png](toy/lonely.png)" in text
    assert "commit abc1234 · wall time 26 min · run 2026-11-30" in text


def test_report_command_is_idempotent_and_check_names_the_stale_file(tmp_path, capsys):
    figs = _figures(tmp_path)
    index = figs / "README.md"
    assert main(["report", "--figures-dir", str(figs), "--check"]) == 1 and not index.exists()
    assert main(["report", "--figures-dir", str(figs)]) == 0
    first = index.read_bytes()
    assert main(["report", "--figures-dir", str(figs)]) == 0 and index.read_bytes() == first
    assert main(["report", "--figures-dir", str(figs), "--check"]) == 0
    capsys.readouterr()
    (figs / "toy" / "land.json").write_text(json.dumps({"meta": META, "rows": [{"toy": "rings", "sw2": 0.5}]}))
    assert main(["report", "--figures-dir", str(figs), "--check"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {index} is stale; run `ebm-nb report` to rebuild it and commit it.\n"
    assert index.read_bytes() == first                                                 # --check writes nothing
    (figs / "_smoke" / "gcd" / "smoky.json").write_text("{}")                           # smoke runs never matter
    assert main(["report", "--figures-dir", str(figs)]) == 0 and main(["report", "--figures-dir", str(figs), "--check"]) == 0


def test_old_style_checks_and_no_tables(tmp_path):
    figs = tmp_path / "figures"
    (figs / "gcd").mkdir(parents=True)
    assert "No result tables yet" in build_index(figs)
    (figs / "gcd" / "t.json").write_text(json.dumps({"meta": {**META, "checks": {"a beats b": False}}, "rows": [{"a": 1}]}))
    assert "| NO | a beats b |  |  |  |" in build_index(figs) and "0 of 1" in build_index(figs)
