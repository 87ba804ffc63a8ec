"""MMRecUn's stopping rule watches what is kept (retained validation Recall), not only forgetting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymmrec.config import load_spec
from raymmrec.data import load_dataset
from raymmrec.data.forget import ForgetRequest, apply_forget
from raymmrec.train.build import build, make_sampler
from raymmrec.unlearning.measure import retained_utility, retained_valid_slice
from raymmrec.unlearning.mmrecun import UnlearnOptions, fine_tune, options_from


@pytest.fixture(scope="module")
def tiny():
    spec = load_spec("bpr", overrides=["data.source=synthetic:tiny"])
    data = apply_forget(load_dataset("synthetic:tiny"), ForgetRequest.of(users=[0, 1, 2]))
    p = build(spec, data=data)
    return p.model, data, make_sampler(spec, data, p.graph, num_negatives=1)


def run(tiny, aucs, recalls, **opts):
    """fine_tune with scripted metrics; returns the result, the weights each recall call saw, the final weights."""
    model, data, sampler = tiny
    auc_seq, rec_seq, seen = iter(aucs), iter(recalls), []

    def keep_metric(m):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return next(rec_seq)

    res = fine_tune(model, data, sampler, UnlearnOptions(epochs=6, **opts), lr=1e-2, batch_size=64,
                    device=torch.device("cpu"), stop_metric=lambda m: next(auc_seq), keep_metric=keep_metric)
    return res, seen, model.state_dict()


def same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_an_epoch_that_costs_retained_recall_is_undone_and_stops_unlearning(tiny):
    # forgetting alone would run 5 epochs (AUC reaches 0.5 at the 5th); retained validation Recall
    # falls 1 % after the first epoch (within keep_tol 2 %) and 5 % after the second
    aucs = [0.8, 0.75, 0.7, 0.65, 0.6, 0.5]
    res, seen, final = run(tiny, aucs, [0.40, 0.396, 0.38, 0.38, 0.38, 0.38], keep_tol=0.02)
    assert (res.epochs_run, res.epochs_kept, res.stop_reason) == (2, 1, "utility")
    assert same(final, seen[1]) and not same(final, seen[2])  # rolled back to the first epoch's weights
    assert [round(h["valid_retain_recall"], 3) for h in res.history] == [0.396, 0.38]

    res, seen, final = run(tiny, aucs, [0.40, 0.30], keep_tol=0.02, retries=0)  # even the first epoch costs too much
    assert (res.epochs_run, res.epochs_kept, res.stop_reason) == (1, 0, "utility")
    assert same(final, seen[0])  # the weights it started from

    res, _, _ = run(tiny, aucs, [0.40] + [0.30] * 6, keep_tol=None)  # not watched: forgetting decides
    assert (res.epochs_run, res.epochs_kept, res.stop_reason) == (5, 5, "chance")
    res, _, _ = run(tiny, [0.8, 0.7, 0.699], [0.4] * 3)
    assert (res.epochs_run, res.stop_reason) == (2, "plateau")


def test_a_first_epoch_undone_is_retried_at_half_the_rate_then_warned(tiny):
    # the first epoch at lr costs too much (0.30 < 0.392); at lr/2 it is within keep_tol and forgets to chance
    res, seen, final = run(tiny, [0.8, 0.6, 0.5], [0.40, 0.30, 0.395], keep_tol=0.02)
    assert (res.epochs_run, res.epochs_kept, res.stop_reason, res.warning) == (2, 1, "chance", None)
    assert [h["lr"] for h in res.history] == [1e-2, 5e-3] and res.lr == 5e-3
    assert same(seen[2], final) and not same(final, seen[0])  # the retried epoch's weights are kept
    # every rate costs too much: the trained weights, and a plain warning
    res, seen, final = run(tiny, [0.8] + [0.6] * 3, [0.40, 0.30, 0.30, 0.30], keep_tol=0.02, retries=2)
    assert (res.epochs_run, res.epochs_kept, res.stop_reason) == (3, 0, "utility")
    assert [h["lr"] for h in res.history] == [1e-2, 5e-3, 2.5e-3]
    assert same(final, seen[0]) and res.warning.startswith("nothing forgotten beyond the reset")
    with pytest.raises(ValueError, match="retries"):
        options_from({"retries": "-1"})


def test_the_kept_utility_is_read_from_retained_validation_never_test(tiny):
    model, data, _ = tiny
    v = retained_valid_slice(data)
    assert len(v) == len(data.valid) and not np.isin(v.users, [0, 1, 2]).any()
    few = retained_valid_slice(data, max_users=5, seed=3)
    assert np.unique(few.users).size == 5 and np.isin(few.users, data.valid.users).all()
    r = retained_utility(data)(model)
    assert 0.0 <= r <= 1.0
    with pytest.raises(ValueError, match="keep_tol"):
        options_from({"keep_tol": "1.5"})
