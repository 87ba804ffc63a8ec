"""BPO-MF and NBPO-MF: matrix factorisation trained point-wise (Yu & Qin, SIGIR 2020).

The model is BPR-MF's (:mod:`raymmrec.models.bpr`); only the default objective differs
(:mod:`raymmrec.objectives.pointwise`). The objectives work with any pairwise model, e.g.
``raymmrec train --method lightgcn objective=nbpo``; these two names make the paper's own
setting a method, with the search spaces of its grid.

Search spaces. ``paper`` is the authors' stored tuning in their training recipe (plain SGD ascent on
sums over every triple, learning rate decayed by 0.99 per epoch from before the first, every row of
every table decayed at each batch): ``train.lr`` {0.1, 0.01, 0.001} × ``train.weight_decay``
(their ``lambda_r``) {0.1, 1}, with the flip tables' ``lambda_phi`` = 1 and S = 3 negatives from
all items. That grid is the one stored for their NBPOo/NBPOs ablation (Yu & Qin, SIGIR 2020; Wenhui-Yu/NBPO); NBPO's own
reported setting (Amazon: lr 0.05, lambda_r 1, lambda_phi 5) lies near it. Batches hold 5000
positives, as theirs. Differences that remain: batches in a shuffled (theirs: fixed) order, K0 = 64
(theirs: 50) and Xavier rather than positive uniform initialisation of the MF tables.
``raymmrec study noisy-labels --recipe authors`` trains each objective in this recipe at the
authors' published Amazon settings (:data:`AUTHORS_PUBLISHED`). ``wide`` searches the project's
default recipe (Adam on means).
"""

from __future__ import annotations

from raymmrec.models.bpr import BPR
from raymmrec.registry import register
from raymmrec.search import Grid, LogUniform, SearchSpaces

AUTHORS_SETTINGS = {  # the authors' training recipe, shared by every objective they ran (Yu & Qin, SIGIR 2020)
    "train.optimizer": "sgd", "train.lr_decay": 0.99, "train.num_negatives": 3, "train.negative_pool": "all",
    "train.batch_size": 5000, "objective_options.reduction": "sum", "model.reg_weight": 0.0,
}
AUTHORS_RECIPE = {k: Grid((v,)) for k, v in AUTHORS_SETTINGS.items()}
# their published settings on Amazon (η0, λ_r, λ_φ; Yu & Qin, SIGIR 2020, code Wenhui-Yu/NBPO), for the recipe's runs
AUTHORS_PUBLISHED = {
    "bpr": {"train.lr": 0.05, "train.weight_decay": 1.0},
    "bpo": {"train.lr": 0.05, "train.weight_decay": 1.0},
    "nbpo": {"train.lr": 0.05, "train.weight_decay": 1.0, "objective_options.flip_reg": 5.0},
    "nbpo_original": {"train.lr": 0.005, "train.weight_decay": 1.0, "objective_options.flip_reg": 0.5},
    "nbpo_surrogate": {"train.lr": 0.002, "train.weight_decay": 0.05, "objective_options.flip_reg": 0.01},
}


def authors_overrides(objective: str) -> list[str]:
    """``section.key=value`` overrides that train ``objective`` in the authors' recipe, at their settings."""
    if objective not in AUTHORS_PUBLISHED:
        raise ValueError(f"the NBPO authors' recipe has no settings for objective {objective!r}; "
                         f"it has {', '.join(AUTHORS_PUBLISHED)}")
    return [f"{k}={v}" for k, v in {**AUTHORS_SETTINGS, **AUTHORS_PUBLISHED[objective]}.items()]


@register("bpo")
class BPOMF(BPR):
    """MF trained with the ``bpo`` objective."""

    default_objective = "bpo"
    search_spaces = SearchSpaces(
        paper={**AUTHORS_RECIPE, "train.lr": Grid((0.1, 0.01, 0.001)), "train.weight_decay": Grid((0.1, 1.0))},
        wide={"model.reg_weight": LogUniform(1e-5, 1.0), "train.lr": LogUniform(1e-4, 1e-2)},
    )


@register("nbpo")
class NBPOMF(BPR):
    """MF trained with the ``nbpo`` objective (its flip model attached by the run)."""

    default_objective = "nbpo"
    search_spaces = SearchSpaces(
        paper={**AUTHORS_RECIPE, "train.lr": Grid((0.1, 0.01, 0.001)), "train.weight_decay": Grid((0.1, 1.0)),
               "objective_options.flip_reg": Grid((1.0,))},
        wide={"model.reg_weight": LogUniform(1e-5, 1.0), "objective_options.flip_reg": LogUniform(1e-3, 10.0),
              "train.lr": LogUniform(1e-4, 1e-2)},
    )
