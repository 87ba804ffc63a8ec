"""Every registered method's loss is exact under DDP: N gloo processes sharing a global batch
produce, after DDP's gradient average, the gradient of one process on the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from _ddp import gradients, worker
from conftest import free_port
from raymmrec.registry import model_names

METHODS = model_names()
BATCH = 61  # not a multiple of 2 or 3: ranks hold unequal shares


@pytest.mark.parametrize("world,num_negatives", [(2, 1), (3, 2)])
def test_ddp_gradients_equal_single_process(tmp_path, world, num_negatives):
    out = tmp_path / "grads.pt"
    mp.spawn(worker, args=(world, free_port(), METHODS, BATCH, num_negatives, str(out)), nprocs=world, join=True)
    ddp = torch.load(out, weights_only=True)
    for method in METHODS:
        single = gradients(method, 0, 1, BATCH, num_negatives)
        assert single.keys() == ddp[method].keys()
        for name, g in single.items():
            torch.testing.assert_close(ddp[method][name], g, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{method} {name} (world {world}): {m}")


def test_non_finite_scores_on_one_rank_stop_every_rank(tmp_path):
    from _ddp import eval_worker

    out = tmp_path / "outcome"
    mp.spawn(eval_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"outcome.{r}").read_text() for r in range(2)]
    assert all(o.startswith("diverged:") for o in outcomes), outcomes
    assert "NaN" in outcomes[1]


def test_non_finite_loss_on_one_rank_stops_every_rank_at_the_epoch_end(tmp_path):
    from _ddp import train_nan_worker

    out = tmp_path / "outcome"
    mp.spawn(train_nan_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"outcome.{r}").read_text() for r in range(2)]
    assert outcomes[0].startswith("diverged after 5 steps: loss became NaN or infinite at epoch 0, a batch "
                                  "on 1 of 2 ranks"), outcomes  # no per-step all-reduce: the epoch ends
    assert outcomes[1].startswith("diverged after 5 steps: loss became NaN or infinite at epoch 0, batch 2 "
                                  "on 1 of 2 ranks"), outcomes
