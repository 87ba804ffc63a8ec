"""Every registered method's loss is exact under DDP: N gloo processes sharing a global batch
produce, after DDP's gradient average, the gradient of one process on the whole batch.

The processes are spawned once for every scenario (the session fixture ``gloo_runs``, tests/_ddp.py).
"""

from __future__ import annotations

import pytest
import torch

from _ddp import BATCH, gradients
from raymmrec.registry import model_names

# every test here needs gloo_runs (each multi-process scenario spawned once): 7 s in the whole suite on 2 cores
pytestmark = pytest.mark.slow
METHODS = model_names()


@pytest.mark.parametrize("world,num_negatives", [(2, 1), (3, 2)])
def test_ddp_gradients_equal_single_process(gloo_runs, world, num_negatives):
    name = f"grads-{world}-{num_negatives}.pt"
    ddp = torch.load(gloo_runs(name) / name, weights_only=True)
    assert sorted(ddp) == sorted(METHODS)
    for method in METHODS:
        single = gradients(method, 0, 1, BATCH, num_negatives)
        assert single.keys() == ddp[method].keys()
        for name, g in single.items():
            torch.testing.assert_close(ddp[method][name], g, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{method} {name} (world {world}): {m}")  # noqa: B023 - at once


def test_non_finite_scores_on_one_rank_stop_every_rank(gloo_runs):
    files = [f"eval-nan.{r}" for r in range(2)]
    outcomes = [(gloo_runs(*files) / f).read_text() for f in files]
    assert all(o.startswith("diverged:") for o in outcomes), outcomes
    assert "NaN" in outcomes[1]


def test_non_finite_loss_on_one_rank_stops_every_rank_at_the_epoch_end(gloo_runs):
    files = [f"train-nan.{r}" for r in range(2)]
    outcomes = [(gloo_runs(*files) / f).read_text() for f in files]
    assert outcomes[0].startswith("diverged after 5 steps: loss became NaN or infinite at epoch 0, a batch "
                                  "on 1 of 2 ranks"), outcomes  # no per-step all-reduce: the epoch ends
    assert outcomes[1].startswith("diverged after 5 steps: loss became NaN or infinite at epoch 0, batch 2 "
                                  "on 1 of 2 ranks"), outcomes
