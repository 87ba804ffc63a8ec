"""A tiny hand-made dataset with planted structure, built in memory (no files)."""

from __future__ import annotations

import numpy as np

from raymmrec.data.schema import Interactions, RecData


def tiny_data(n_users: int = 30, n_items: int = 24, seed: int = 0) -> RecData:
    """Two user groups that like two item groups; features reveal the item group."""
    rng = np.random.default_rng(seed)
    item_group = np.arange(n_items) % 2
    splits: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
    for u in range(n_users):
        liked = np.flatnonzero(item_group == u % 2)
        chosen = rng.choice(liked, size=8, replace=False)
        for k, i in enumerate(chosen):
            splits[0 if k < 6 else (1 if k == 6 else 2)].append((u, int(i)))

    def inter(rows: list[tuple[int, int]]) -> Interactions:
        a = np.array(rows, dtype=np.int64)
        return Interactions(a[:, 0].copy(), a[:, 1].copy())

    onehot = np.eye(2, dtype=np.float32)[item_group]
    feats = {
        "text": np.hstack([onehot, rng.normal(0, 0.1, (n_items, 6))]).astype(np.float32),
        "image": np.hstack([onehot[:, ::-1], rng.normal(0, 0.1, (n_items, 10))]).astype(np.float32),
    }
    return RecData("tiny", n_users, n_items, inter(splits[0]), inter(splits[1]), inter(splits[2]), feats)


def move_after_loading(monkeypatch, module, folder, gone) -> None:  # noqa: ANN001
    """Make ``module.share`` (the Ray layer's one loading task) move ``folder`` to ``gone`` as soon as it
    has read it: any later read of the source fails."""
    real = module.share

    def then_move(*args, **kw):  # noqa: ANN002, ANN003
        shared = real(*args, **kw)
        folder.rename(gone)
        return shared

    monkeypatch.setattr(module, "share", then_move)
