"""Run by tests/test_training.py under torchrun (2 ranks, gloo on CPU): data-parallel training of the demo method.

Usage: python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_script.py OUT_DIR
Each rank saves to OUT_DIR/rank<r>.pt its initial and final weights, its EMA of them (built before train), the sums
of the batches it drew, the weights after a run killed at step 9 and resumed from the checkpoint of step 6, the message of a guard that fired on rank 1 only, and a gradient averaged by allreduce_grads.
"""
import sys
from pathlib import Path

import torch

from ebm_nb.core import seed_everything
from ebm_nb.training import EMA, GaussianCD, TrainingDiverged, allreduce_grads, ddp_cleanup, ddp_setup, train


class Killed(Exception): pass


class Recording(GaussianCD):
    "The demo method, recording its batches; step number `kill_at` raises as if the process were killed."
    def __init__(self, kill_at=None, **kw):
        super().__init__(**kw)
        self.kill_at, self.batch_sums = kill_at, []

    def step(self, batch):
        if self.steps + 1 == self.kill_at: raise Killed()
        self.batch_sums.append(batch.sum().item())
        return super().step(batch)


def main(out: Path):
    rank, world = ddp_setup()
    assert world == 2, f"expected 2 ranks, got {world}"
    data = 2 + 0.5 * torch.randn(512, 2, generator=torch.Generator().manual_seed(0))

    def make(**kw):
        seed_everything(rank)
        m = Recording(dim=2, lr=0.05, langevin_steps=2, seed=10 + rank, **kw)
        with torch.no_grad(): m.nets["energy"].mu.add_(rank)  # ranks start apart: train must broadcast rank 0's weights
        return m

    gen = lambda: torch.Generator().manual_seed(5)
    m = make()
    init = {k: v.clone() for k, v in m.nets["energy"].state_dict().items()}
    ema = EMA(m.nets["energy"], 0.9)  # built before train: a copy of this rank's own initial weights
    hist = train(m, data, 12, 32, generator=gen(), log_every=4, ema={"ema": ema})

    try: train(make(kill_at=9), data, 12, 32, generator=gen(), ckpt_path=out / "ck.pt", ckpt_every=6)
    except Killed: pass
    resumed = make()
    train(resumed, data, 12, 32, generator=gen(), ckpt_path=out / "ck.pt", ckpt_every=6)

    try:
        train(Recording(nan_at=3 if rank == 1 else None), data, 10, 8)
        diverged = None
    except TrainingDiverged as e: diverged = str(e)

    lin = torch.nn.Linear(3, 1)
    for p in lin.parameters(): p.grad = torch.full_like(p, rank + 1.0)
    allreduce_grads(lin)  # the mean of 1 and 2

    torch.save({"init": init, "grad": lin.weight.grad, "final": m.nets["energy"].state_dict(), "ema": ema.module.state_dict(),
                "batch_sums": m.batch_sums, "history": hist,
                "resumed": resumed.nets["energy"].state_dict(), "diverged": diverged}, out / f"rank{rank}.pt")
    ddp_cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
