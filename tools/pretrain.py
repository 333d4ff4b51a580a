"""Train, publish and re-score the committed `cpu` reference models (checkpoints/pretrained/).

Each model is trained by the runner its notebooks call, with `cache=True`, so the file it leaves in the cache is the
model those notebooks would train; `publish` copies it into checkpoints/pretrained/ with its sha256, the command, the
commit and the wall time, and the score of a small fixed sample that `tests/test_pretrained.py` checks again.

Usage (from the repository root; EBM_NB_CACHE names the cache, default checkpoints/cache):
  python tools/pretrain.py train NAME            train (or load from the cache), score 2000 samples, print the row
  python tools/pretrain.py publish NAME [--key KEY] [--command CMD] [--commit SHA]
                                                 copy the cached model into the committed folder, score it, list it
  python tools/pretrain.py score NAME            the small-sample score of the committed model (what the test checks)
NAMES: ddpm-cpu-fmnist-seed0, dxmi-cpu-fmnist-T10-seed0, dual_mcmc-cpu-fmnist-seed0, improved_cd-cpu-fmnist-seed0,
  and Dual-MCMC Table 4's other columns: dual_mcmc_noise_l10-cpu-fmnist-seed0, dual_mcmc_noise_l30-cpu-fmnist-seed0,
  dual_mcmc-cpu-fmnist-z30-seed0.
DxMI fine-tunes the published DDPM: publish that first.
"""

import argparse
import json
import sys
import time
from functools import partial

import torch

from ebm_nb.dual_mcmc import DUAL_MCMC_EVAL

SCORE_N, SCORE_REF = 256, 1000  # the re-scored sample: 256 samples against the first 1000 test images
SEED = 0
DUAL_TRACK = DUAL_MCMC_EVAL["cpu"].n_track  # test images Table 4 and the figures track at `cpu` (their `ev.n_track`)
ICD_TRACK = 500  # EMA samples the improved-CD main model scores 8 times over training (its curve in 11_improved_cd)


def _ddpm(pretrained=True, cache=True):
    from ebm_nb.core import seed_everything
    from ebm_nb.gcd import image_ddpm, load_images

    g = seed_everything(SEED)  # as DxMI Table 2's notebook: the seed, then the training images, then the DDPM
    x = load_images("fmnist", "train")
    return image_ddpm("fmnist", "cpu", x, generator=g, seed=SEED, cache=cache, pretrained=pretrained)


def _ddpm_keys():
    from ebm_nb.checkpoints import model_keys
    from ebm_nb.presets import get_preset

    cfg = get_preset("ddpm", "cpu", "fmnist")
    return list(model_keys("diffusion", cfg, SEED, "fmnist:train:n=60000"))


def _dxmi_keys():
    from ebm_nb.checkpoints import model_keys
    from ebm_nb.gcd import _GCD_CODE, state_hash
    from ebm_nb.presets import get_preset

    cfg = get_preset("gcd", "cpu", "fmnist", T=10)
    data = f"fmnist:train:ddpm={state_hash(_eps())}"
    return list(model_keys("gcd", cfg, SEED, data, modules=_GCD_CODE))


def _eps():
    return {k: v.cpu() for k, v in _ddpm().eps_net.state_dict().items()}


def _dxmi(n_eval, n_ref, pretrained):
    from ebm_nb.gcd import image_variant

    rows = image_variant(
        {"method": "DxMI", "T": 10}, SEED, eps_state=_eps(), scale="cpu", n_eval=n_eval, n_ref=n_ref,
        guidance=0.5, cache=True, pretrained=pretrained,
    )
    return rows[0]


def _dual(n_eval, n_ref, pretrained, preset="dual_mcmc", overrides=None, track=0):
    from ebm_nb.dual_mcmc import run_row

    row = {"preset": preset, "overrides": overrides or {}}
    return run_row(row, SEED, scale="cpu", dataset="fmnist", evals=("gen",), n_eval=n_eval, n_ref=n_ref, track=track,
                   cache=True, pretrained=pretrained)


def _dual_keys(preset="dual_mcmc", overrides=None, track=0):
    from ebm_nb.dual_mcmc import row_keys
    from ebm_nb.presets import get_preset

    return list(row_keys(get_preset(preset, "cpu", "fmnist", **(overrides or {})), SEED, "fmnist", track))


DUAL_TABLE4 = {  # Table 4's other columns (Fig. 3 shares the first two), trained with Fig. 3's tracking (`n_track`)
    "dual_mcmc_noise_l10-cpu-fmnist-seed0": ("dual_mcmc_noise_l10", {}),
    "dual_mcmc_noise_l30-cpu-fmnist-seed0": ("dual_mcmc_noise_l30", {}),
    "dual_mcmc-cpu-fmnist-z30-seed0": ("dual_mcmc", {"z_steps": 30}),
}


def _icd(n_eval, n_ref, pretrained, track=0):
    from ebm_nb.improved_cd import run_variant

    out = run_variant("full", "cpu", seed=SEED, n_eval=n_eval, n_ref=n_ref, track=track, log_every=150,
                      cache=True, pretrained=pretrained)
    return out["row"] | {"_curve": out["curve"]}


def _icd_keys():
    from ebm_nb.checkpoints import model_keys
    from ebm_nb.improved_cd import ablate
    from ebm_nb.presets import get_preset

    cfg = ablate(get_preset("improved_cd", "cpu", "fmnist"), "full")
    return list(model_keys("improved_cd", cfg, SEED, "fmnist:train:n=None:classes=None"))


def _ddpm_score(n_eval, n_ref, pretrained):
    "The DDPM's respaced 10-step sampler (DxMI's start point); with 2000+ samples also the table's 100-step row."
    from ebm_nb.core import to_01
    from ebm_nb.diffusion import ddpm_sampler, rollout
    from ebm_nb.gcd import image_features, load_images
    from ebm_nb.metrics import feature_stats, image_eval

    d = _ddpm(pretrained=pretrained)
    feats = image_features("fmnist")
    ref = feature_stats(feats, load_images("fmnist", "test")[:n_ref])
    start, g = ddpm_sampler(d.eps_net, d.shape, 10), torch.Generator().manual_seed(SEED)
    row = image_eval(lambda k: to_01(rollout(start, k, g)[-1]), n_eval, ref, feats, "fd_fmnist")
    if n_eval >= 2000:
        torch.manual_seed(SEED)
        full = image_eval(lambda k: d.sample(k, 100), n_eval, ref, feats, "fd_fmnist")
        row |= {f"{k}_100steps": full[k] for k in SCORE_KEYS}
    return row


MODELS = {  # name: (keys, run(n_eval, n_ref, pretrained, **train_kw) -> row, train_kw of `train`)
    "ddpm-cpu-fmnist-seed0": (_ddpm_keys, _ddpm_score, {}),
    "dxmi-cpu-fmnist-T10-seed0": (_dxmi_keys, _dxmi, {}),
    "dual_mcmc-cpu-fmnist-seed0": (_dual_keys, _dual, {}),
    **{
        name: (partial(_dual_keys, p, o, DUAL_TRACK), partial(_dual, preset=p, overrides=o), {"track": DUAL_TRACK})
        for name, (p, o) in DUAL_TABLE4.items()
    },
    "improved_cd-cpu-fmnist-seed0": (_icd_keys, _icd, {"track": ICD_TRACK}),
}
SCORE_KEYS = ("fd_fmnist", "is_fmnist", "coverage")


def score(name: str) -> dict:
    "The small-sample score of the committed model `name`, loaded as the notebooks load it (pretrained=True)."
    from ebm_nb.checkpoints import read_manifest

    spec, committed = MODELS[name][0]()[1], read_manifest()[name]["spec"]
    if spec != committed:  # the runner would train a new model for minutes to hours, then fail: say so now
        raise RuntimeError(
            f"{name}: this code's preset builds model {spec}, but the committed one is {committed}; "
            f"train and publish it again (python tools/pretrain.py train {name}, then publish)."
        )
    row = MODELS[name][1](SCORE_N, SCORE_REF, True)
    if "cached" in row and row["cached"] != "pretrained":
        raise RuntimeError(f"{name}: the runner did not load the committed model (cached={row['cached']!r}).")
    return {"n_eval": SCORE_N, "n_ref": SCORE_REF} | {k: round(float(row[k]), 4) for k in SCORE_KEYS}


def main(argv=None):
    from ebm_nb.checkpoints import publish_pretrained, read_manifest
    from ebm_nb.results import git_commit

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("train", "publish", "score"))
    p.add_argument("name", choices=tuple(MODELS))
    p.add_argument("--key", help="the cache key to publish (default: the key of this code)")
    p.add_argument("--command", help="the command that trained it (default: this script's train command)")
    p.add_argument("--commit", help="the commit that trained it (default: this checkout's)")
    p.add_argument("--evaluation", help="a file holding the JSON row that `train` printed (its full evaluation)")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    keys, run, train_kw = MODELS[a.name]
    if a.action == "train":
        t0 = time.time()
        row = run(2000, None, False, **train_kw)
        row = {k: v for k, v in row.items() if not k.startswith("_") or k == "_curve"}
        print(json.dumps(row | {"wall_s": round(time.time() - t0, 1)}, default=str), flush=True)
    elif a.action == "publish":
        key, spec = keys()
        cmd = a.command or f"EBM_NB_CACHE=<cache> python tools/pretrain.py train {a.name}"
        ev = json.loads(open(a.evaluation).read().strip().splitlines()[-1]) if a.evaluation else {}
        ev = {k: v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        args = (a.name, a.key or key, spec, cmd, a.commit or git_commit())
        publish_pretrained(*args)  # listed first, so that `score` loads it as the notebooks will
        entry = publish_pretrained(*args, score(a.name), ev)
        print(json.dumps(entry, indent=1))
    else:
        print(json.dumps({"committed": read_manifest()[a.name]["score"], "now": score(a.name)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
