"""A small generated catalogue with images and interactions: the end-to-end example of docs/features.md.

    python -m raymmrec.features.demo --out /tmp/demo [--items 96] [--users 240] [--seed 0]

Writes ``<out>/images/<itemID>.png`` (a coloured shape on a noisy background: 4 colours x 3 shapes),
``<out>/items.tsv`` (``itemID``, ``text``: only "item <id>", so the text says nothing) and
``<out>/demo.inter`` (MMRec format). Each user likes one colour and has 12 interactions with items of
that colour, split 8 / 2 / 2 into train / valid / test at random: only the images reveal what a user
will like, so a model on image features should beat one without. The folder is then a dataset:
``raymmrec features`` adds ``image_feat.npy`` and ``image2text_feat.npy`` to it and ``raymmrec train
--data <out>`` trains on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: tuple[int, int, int], shape: str, rng: np.random.Generator, size: int = 224):  # noqa: ANN201
    """One item's picture (a PIL image)."""
    from PIL import Image, ImageDraw

    background = rng.integers(150, 255, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r + 4, size - r - 4, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def make_demo(out: str | Path, n_items: int = 96, n_users: int = 240, seed: int = 0) -> Path:
    """Write the catalogue and the interactions under ``out``; returns the folder."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    colour = np.arange(n_items) % len(names)
    shape = (np.arange(n_items) // len(names)) % len(SHAPES)
    for i in range(n_items):
        draw(COLOURS[names[colour[i]]], SHAPES[shape[i]], rng).save(out / "images" / f"{i}.png")
    pd.DataFrame({"itemID": np.arange(n_items), "text": [f"item {i}" for i in range(n_items)]}).to_csv(
        out / "items.tsv", sep="\t", index=False)
    rows = []
    for u in range(n_users):
        liked = np.flatnonzero(colour == u % len(names))
        chosen = rng.choice(liked, size=min(12, liked.size), replace=False)
        for k, i in enumerate(chosen):
            rows.append((u, int(i), 1, 0, 0 if k < 8 else (1 if k < 10 else 2)))
    inter = pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"])
    inter.to_csv(out / "demo.inter", sep="\t", index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raymmrec.features.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--items", type=int, default=96)
    p.add_argument("--users", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    folder = make_demo(a.out, a.items, a.users, a.seed)
    print(f"wrote {a.items} items (images/, items.tsv) and {a.users} users' interactions (demo.inter) to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
