"""Helpers shared by the test files (pytest puts tests/ on sys.path, so `from helpers import ...` works)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def torchrun(script, out_dir, timeout: int = 300) -> tuple[dict, dict]:
    """Run `script out_dir` on two ranks under torchrun (one thread each, quiet, importing this checkout); return the
    `rank0.pt` and `rank1.pt` it wrote to `out_dir`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EBM_NB_QUIET": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    res = subprocess.run(
        [*cmd, str(script), str(out_dir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"torchrun failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return tuple(torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in (0, 1))
