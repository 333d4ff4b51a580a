"""The committed `cpu` reference models (the models of tools/pretrain.py MODELS published so far): each file
matches its sha256, and each loads through the runner its notebooks
call (`pretrained=True`) and scores as committed on a small fixed sample (tools/pretrain.py `score`)."""

import importlib.util
import math
from pathlib import Path

import pytest

from ebm_nb.checkpoints import pretrained_dir, read_manifest, sha256_file

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pretrain", ROOT / "tools" / "pretrain.py")
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)
MANIFEST = read_manifest()


def test_committed_models_are_known_and_small():
    assert MANIFEST and set(MANIFEST) <= set(pretrain.MODELS), "publish models of tools/pretrain.py MODELS only"
    total = sum(e["bytes"] for e in MANIFEST.values())
    assert total < 30e6, f"the committed models take {total / 1e6:.1f} MB; the budget is 30 MB"
    for name, e in MANIFEST.items():
        assert e["command"] and e["commit"] and e["train_s"] > 0, f"{name}: command, commit and time are required"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_presets_still_build_the_committed_models(name):
    spec = pretrain.MODELS[name][0]()[1]
    assert spec == MANIFEST[name]["spec"], f"{name}: a preset changed since it was trained; train and publish it again"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_sha256(name):
    e = MANIFEST[name]
    assert sha256_file(pretrained_dir() / e["file"]) == e["sha256"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_scores_as_committed(name):
    import torch

    torch.set_num_threads(2)  # as when it was scored
    now, committed = pretrain.score(name), MANIFEST[name]["score"]
    for k, v in committed.items():
        assert math.isclose(now[k], v, rel_tol=1e-3, abs_tol=1e-3), f"{name}: {k} {now[k]} != committed {v}"
