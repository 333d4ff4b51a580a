"""ebm_nb.core edge cases: seeds, stale temp files of killed checkpoint writes, checkpoints of another class."""
import numpy as np
import pytest
import torch

from ebm_nb.core import seed_everything
from ebm_nb.checkpoints import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("seed", [1.5, -1, True, "3", 2.0])
def test_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(ValueError, match=f"seed must be a non-negative integer, got {seed!r}"): seed_everything(seed)


def test_seed_accepts_numpy_integers_and_big_seeds():
    assert torch.equal(torch.rand(2, generator=seed_everything(np.int64(3))), torch.rand(2, generator=seed_everything(3)))
    seed_everything(2**40)


def test_save_removes_stale_temp_files_of_that_checkpoint_only(tmp_path):
    path = tmp_path / "ck.pt"
    stale = [tmp_path / ".ck.pt.k3j_x9qz.tmp", tmp_path / ".ck.pt.abcdefgh.tmp"]  # left by writes killed with SIGKILL
    keep = [tmp_path / ".ck.pt.x.abcdefgh.tmp", tmp_path / ".other.pt.abcdefgh.tmp", tmp_path / "ck.pt.tmp",
            tmp_path / "notes.txt", tmp_path / ".ck.pt.abcdefgh.tmp.bak"]
    for p in stale + keep: p.write_bytes(b"half a checkpoint")
    save_checkpoint(path, 3, model=torch.nn.Linear(2, 1))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name] + [p.name for p in keep])
    assert load_checkpoint(path, restore_rng=False)["iteration"] == 3


class A(torch.nn.Linear):
    pass


class B(torch.nn.Module):
    def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1))
    def load_state_dict(self, sd): self.w.data.copy_(sd["w_of_b"])  # a method's load_state_dict: a bare KeyError


def test_checkpoint_of_another_class_fails_with_one_sentence(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, 1, method=A(2, 1), opt=torch.Generator())
    with pytest.raises(TypeError, match=r"ck.pt holds class A under 'method', but B asked for it"):
        load_checkpoint(path, method=B())
    # the same class, a subclass or a base class still load
    for cls in (A, torch.nn.Linear):
        load_checkpoint(path, restore_rng=False, method=cls(2, 1))

    class C(A): pass
    load_checkpoint(path, restore_rng=False, method=C(2, 1))


def test_old_checkpoints_without_types_still_load(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, 2, method=torch.nn.Linear(2, 1))
    ck = torch.load(path, weights_only=False); ck.pop("types", None); torch.save(ck, path)
    assert load_checkpoint(path, restore_rng=False, method=torch.nn.Linear(2, 1))["iteration"] == 2
