"""`raymmrec data amazon`: raw fixtures in every format, written here, built into MMRec folders.

Checked against plain re-implementations of MMRec's steps (the k-core as MMRec's notebook loops, the
split rule as its per-user lists), then through the project's loader and a one-epoch BPR run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raymmrec.data import load_dataset
from raymmrec.data import amazon as core
from raymmrec.data.schema import DataError
from raymmrec.features.encoders import Encoder
from raymmrec.ray.amazon import Options, Sources, build_amazon, main

USERS = [f"A{u:03d}XYZ" for u in range(40)]
ITEMS = [f"B{i:09d}" for i in range(30)]  # 10-character ASINs
RARE = [f"R{i:09d}" for i in range(4)]  # items with too few interactions: gone in the 5-core
NO_META, NO_IMAGE = ITEMS[3], (ITEMS[5], ITEMS[8])


def _interactions() -> list[tuple[str, str, float, int]]:
    """(user, item, rating, unix seconds) in file order: 40 users (not in id order) with 5-24 items, a tail
    the k-core removes over several rounds, and one repeated (user, item) pair."""
    rng = np.random.default_rng(7)
    rows = []
    for u in rng.permutation(USERS).tolist():
        for i in rng.choice(len(ITEMS), size=int(rng.integers(5, 25)), replace=False):
            rows.append((u, ITEMS[i], float(rng.integers(1, 6)), 1_300_000_000 + int(rng.integers(0, 10**8))))
    for k in range(6):  # tail users: a rare item and one common one
        rows += [(f"T{k:03d}XYZ", RARE[k % 4], 3.0, 1_350_000_000), (f"T{k:03d}XYZ", ITEMS[k], 4.0, 1_350_000_001)]
    # five interactions, one of them with a rare item: out in the second round, which takes items with it
    rows += [("C000XYZ", it, 5.0, 1_360_000_000) for it in (RARE[0], ITEMS[1], ITEMS[2], ITEMS[4], ITEMS[6])]
    rows.append((rows[0][0], rows[0][1], 2.0, 1_400_000_000))  # the same pair again, later
    return rows


ROWS = _interactions()


def _item_meta(asin: str, release: int) -> dict:
    i = int(asin[1:])
    if release == 2014:
        return {"asin": asin, "title": f"Soft toy {i}", "price": 9.99, "imUrl": f"http://example/{asin}.jpg",
                "related": {"also_bought": ITEMS[:2]}, "brand": f"Brand{i % 3}",
                "categories": [["Baby", f"Toys {i % 4}"], ["Gifts"]], "salesRank": {"Baby": i},
                "description": f"A toy for\nbabies, it's number {i}."}
    return {"main_category": "Baby", "title": f"Soft toy {i}", "average_rating": 4.5, "features": ["washable"],
            "description": ["A toy for babies,", f"number {i}."], "price": None, "images": [],
            "store": f"Store{i % 3}", "categories": ["Baby", f"Toys {i % 4}"], "details": {"Brand": "ignored"},
            "parent_asin": asin}


def _gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def _vector(asin: str) -> np.ndarray:
    return np.random.default_rng(int(asin[1:]) + 1000 * (asin[0] == "R")).normal(size=core.B_DIM).astype("<f4")


def write_raw(folder: Path) -> dict[str, Path]:
    """Every raw format: the 2014 ratings CSV, 5-core reviews, Python-literal meta and .b file, and the 2023
    reviews and meta. One ratings line lacks its timestamp (dropped, as MMRec's dropna)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_lines = [f"{u},{i},{r},{t}" for u, i, r, t in ROWS]
    csv_lines.insert(10, f"{USERS[1]},{ITEMS[0]},5.0,")
    (folder / "ratings_Baby.csv").write_text("\n".join(csv_lines) + "\n")
    reviews = [json.dumps({"reviewerID": u, "asin": i, "reviewerName": "x", "overall": r, "unixReviewTime": t,
                           "reviewText": "Nice, \"really\"."}) for u, i, r, t in ROWS]
    reviews.insert(10, json.dumps({"reviewerID": USERS[1], "asin": ITEMS[0], "overall": 5.0}))
    _gz(folder / "reviews_Baby_5.json.gz", reviews)
    r23 = [json.dumps({"rating": r, "title": "t", "text": "x", "images": [], "asin": "V" + i[1:],
                       "parent_asin": i, "user_id": u, "timestamp": t * 1000 + 321, "helpful_vote": 0,
                       "verified_purchase": True}) for u, i, r, t in ROWS]
    _gz(folder / "Baby_Products.jsonl.gz", r23)
    asins = [a for a in ITEMS + RARE if a != NO_META]
    _gz(folder / "meta_Baby.json.gz", [repr(_item_meta(a, 2014)) for a in asins])
    _gz(folder / "meta_Baby_Products.jsonl.gz", [json.dumps(_item_meta(a, 2023)) for a in asins])
    with open(folder / "image_features_Baby.b", "wb") as f:
        for a in reversed(ITEMS + RARE):
            if a not in NO_IMAGE:
                f.write(a.encode() + _vector(a).tobytes())
        f.write(ITEMS[0].encode() + np.zeros(core.B_DIM, "<f4").tobytes())  # listed again: the first record counts
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    return write_raw(tmp_path_factory.mktemp("raw"))


class HashText(Encoder):
    """A fast stand-in for the text encoder: a vector drawn from a hash of the text; empty text is missing."""

    modality, name, dim = "text", "hash-text", 8

    def encode(self, batch):  # noqa: ANN001, ANN201
        out = np.full((len(batch), self.dim), np.nan, dtype=np.float32)
        failures = []
        for k, text in enumerate(batch):
            if not text:
                failures.append(("missing", "empty text"))
                continue
            out[k] = self.vector(text)
            failures.append(None)
        return out, failures

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=8).astype(np.float32)


def build(raw: dict[str, Path], out: Path, *, release: int = 2014, **kw) -> dict:
    src = Sources(ratings=str(raw["ratings_Baby.csv"]), meta=str(raw["meta_Baby.json.gz"]),
                  images=str(raw["image_features_Baby.b"])) if release == 2014 else \
        Sources(reviews=str(raw["Baby_Products.jsonl.gz"]), meta=str(raw["meta_Baby_Products.jsonl.gz"]))
    opts = Options(local=True, progress=False, text_factory=HashText, **kw)
    return build_amazon(src, str(out), opts)


# --------------------------------------------------------------------------------------------- references
def first_pairs(rows: list[tuple]) -> list[tuple]:
    """The rows without a repeated (user, item) pair, the first one kept."""
    seen: set[tuple] = set()
    return [r for r in rows if (r[0], r[1]) not in seen and not seen.add((r[0], r[1]))]


def mmrec_kcore(rows: list[tuple], k: int = 5) -> list[tuple]:
    """MMRec's filter_by_k_core, plainly: drop every row of a user or item under k, until none is."""
    rows = list(rows)
    while True:
        users, items = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            return rows
        rows = kept


def mmrec_split_sizes(n: int) -> tuple[int, int, int]:
    """MMRec's 1splitting notebook: the (train, valid, test) sizes of a user with n interactions."""
    if n < 10:
        return n - 2, 1, 1
    val_test = int(n * 0.2)
    return n - val_test, val_test // 2, val_test - val_test // 2


def read_folder(folder: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    inter = pd.read_csv(next(folder.glob("*.inter")), sep="\t")
    users = core.read_id_map((folder / "u_id_mapping.csv").read_bytes(), "user_id", "userID")
    items = core.read_id_map((folder / "i_id_mapping.csv").read_bytes(), "asin", "itemID")
    return inter, users, items


# --------------------------------------------------------------------------------------------- parsing
def _parse_all(path: Path, kind: str, **kw) -> pd.DataFrame:
    parts = [core.parse_interactions(lines, numbers, str(path), kind, **kw)
             for numbers, lines in core.line_chunks(str(path), chunk_lines=17)]
    return pd.concat(parts, ignore_index=True)


def test_three_interaction_formats_parse_alike(raw):
    expected = pd.DataFrame(ROWS, columns=["user", "item", "rating", "timestamp"])
    for name, kind in (("ratings_Baby.csv", "ratings"), ("reviews_Baby_5.json.gz", "reviews"),
                       ("Baby_Products.jsonl.gz", "reviews")):
        rows = _parse_all(raw[name], kind)
        if name != "Baby_Products.jsonl.gz":  # the line without a timestamp: dropped as MMRec's dropna does
            assert rows["status"].tolist().count(core.MISSING) == 1 and rows.loc[10, "line"] == 11
        ok = rows[rows["status"] == core.OK].reset_index(drop=True)
        pd.testing.assert_frame_equal(ok[["user", "item", "rating", "timestamp"]], expected, check_dtype=False)


def test_cut_download_is_one_error(raw, tmp_path):
    cut = tmp_path / "reviews_Cut_5.json.gz"
    cut.write_bytes(raw["reviews_Baby_5.json.gz"].read_bytes()[:-40])
    with pytest.raises(DataError, match=r"reviews_Cut_5\.json\.gz: cannot read past line \d+: .* \(a corrupt or "
                                        r"incomplete download\?\)"):
        _parse_all(cut, "reviews")


def test_item_text_recipe():
    assert core.item_text(_item_meta("B000000007", 2014)) == \
        "Soft toy 7 Brand1 Baby Toys 3 A toy for babies, it's number 7."  # the first category path only
    assert core.item_text(_item_meta("B000000007", 2023)) == \
        "Soft toy 7 Store1 Baby Toys 3 A toy for babies, number 7."  # 2023: the store, a flat category list
    assert core.item_text({"asin": "x", "details": {"Brand": "Acme"}, "title": None}) == "Acme"
    assert core.item_text({"asin": "x"}) == ""


def test_python_literal_meta_is_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [repr(_item_meta(ITEMS[0], 2014)), "__import__('os').system('touch PWNED')",
             repr(_item_meta(ITEMS[1], 2014))]
    path = _gz(tmp_path / "meta_Evil.json.gz", lines)
    chunks = list(core.line_chunks(str(path)))
    with pytest.raises(DataError, match=r"meta_Evil\.json\.gz: line 2: expected a JSON object or a Python "
                                        r"literal dict \(metadata is parsed, never evaluated as code\)"):
        core.parse_meta(chunks[0][1], chunks[0][0], str(path))
    assert not (tmp_path / "PWNED").exists()
    rows = core.parse_meta(chunks[0][1], chunks[0][0], str(path), skip_bad=True)
    assert rows["status"].tolist() == [core.OK, core.BAD, core.OK] and rows["asin"].tolist()[::2] == ITEMS[:2]
    assert not (tmp_path / "PWNED").exists()


def test_b_records_and_alignment(raw, tmp_path):
    path = str(raw["image_features_Baby.b"])
    n, cut = core.b_record_count(raw["image_features_Baby.b"].stat().st_size, path)
    assert n == len(ITEMS) + len(RARE) - len(NO_IMAGE) + 1 and cut == []
    keep = frozenset(ITEMS)
    parts = [core.read_b_records(path, s, c, keep) for s, c in core.b_ranges(n, per_read=7)]
    asins = [a for p in parts for a in p[0]]
    table, found = core.align_rows(ITEMS, asins, np.concatenate([p[1] for p in parts]))
    assert found.tolist() == [a not in NO_IMAGE for a in ITEMS]
    for i, a in enumerate(ITEMS):
        if found[i]:
            np.testing.assert_array_equal(table[i], _vector(a))
    broken = tmp_path / "cut.b"
    broken.write_bytes(raw["image_features_Baby.b"].read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"cut\.b: record {n}: cut off after 16294 of its 16394 bytes"):
        core.b_record_count(broken.stat().st_size, str(broken))


# --------------------------------------------------------------------------------------------- the folder
@pytest.fixture(scope="module")
def baby(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built") / "baby"
    return out, build(raw, out)


def test_counts_kcore_and_id_maps(baby):
    folder, record = baby
    inter, users, items = read_folder(folder)
    deduped = first_pairs(ROWS)
    expected = mmrec_kcore(deduped)
    assert sorted(zip(users[inter["userID"]], items[inter["itemID"]])) == sorted((u, i) for u, i, _, _ in expected)
    assert len(inter) == len(expected) < len(deduped) and record["interactions"]["kcore_rounds"] >= 2
    for column in ("userID", "itemID"):  # the k-core property and dense ids
        counts = inter[column].value_counts()
        assert counts.min() >= 5 and sorted(counts.index) == list(range(len(counts)))
    # ids in order of first appearance in the raw file (MMRec's pd.unique), ratings and times carried over
    assert list(users) == list(dict.fromkeys(u for u, _, _, _ in expected))
    assert list(items) == list(dict.fromkeys(i for _, i, _, _ in expected))
    raw_rows = {(u, i): (r, t) for u, i, r, t in expected}
    assert all(raw_rows[(users[u], items[i])] == (r, t)
               for u, i, r, t in inter[["userID", "itemID", "rating", "timestamp"]].itertuples(index=False))
    assert record["interactions"]["duplicates_dropped"] == 1 and record["interactions"]["missing"] == 1


def test_split_follows_mmrec_rule(baby, raw, tmp_path):
    folder, _ = baby
    inter, _, _ = read_folder(folder)
    sizes = inter.groupby("userID")["x_label"].agg(lambda s: tuple(int((s == c).sum()) for c in range(3)))
    n = inter.groupby("userID").size()
    # both branches of the rule, and 20% held out that is odd (from 15: the two rules differ)
    assert (n < 10).any() and ((n >= 15) & ((n * 2 // 10) % 2 == 1)).any()
    assert all(sizes[u] == mmrec_split_sizes(int(n[u])) for u in n.index)
    other = build(raw, tmp_path / "baby", seed=1)  # another seed: other held-out items, the same sizes
    inter2, _, _ = read_folder(tmp_path / "baby")
    held = lambda frame: set(map(tuple, frame.loc[frame["x_label"] > 0, ["userID", "itemID"]].to_numpy()))  # noqa: E731
    assert held(inter) != held(inter2) and other["interactions"]["train"] == int((inter["x_label"] == 0).sum())


def test_features_aligned_with_ids(baby, raw):
    folder, record = baby
    _, _, items = read_folder(folder)
    text, image = np.load(folder / "text_feat.npy"), np.load(folder / "image_feat.npy")
    assert text.shape == (len(items), 8) and image.shape == (len(items), core.B_DIM)
    with_text = [i for i, a in enumerate(items) if a != NO_META]
    for i in with_text:
        np.testing.assert_allclose(text[i], HashText.vector(core.item_text(_item_meta(items[i], 2014))))
    np.testing.assert_allclose(text[list(items).index(NO_META)], text[with_text].mean(axis=0), rtol=1e-5)
    has = [i for i, a in enumerate(items) if a not in NO_IMAGE]
    for i in has:
        np.testing.assert_array_equal(image[i], _vector(items[i]))
    for a in NO_IMAGE:
        np.testing.assert_allclose(image[list(items).index(a)], image[has].mean(axis=0), rtol=1e-5)
    assert record["text"]["items_with_meta"] == len(items) - 1 and record["image"]["items_without_vector"] == 2
    manifest = json.loads((folder / "image_feat.manifest.json").read_text())
    assert manifest["missing"]["ids"] == sorted(list(items).index(a) for a in NO_IMAGE)


def test_two_builds_are_identical(baby, raw, tmp_path):
    folder, _ = baby
    again = build(raw, tmp_path / "baby")
    # each stage's time comes back with the record, and stays out of amazon.json (which must not vary)
    assert list(again["seconds"]) == ["start", "interactions: read and parse", "MMRec's steps",
                                      "metadata: read and parse", "text features", "image features", "write", "total"]
    assert all(v >= 0 for v in again["seconds"].values())
    assert again["seconds"]["total"] >= sum(v for k, v in again["seconds"].items() if k != "total")
    assert "seconds" not in json.loads((tmp_path / "baby" / "amazon.json").read_text())
    for name in ("baby.inter", "u_id_mapping.csv", "i_id_mapping.csv", "text_feat.npy", "image_feat.npy",
                 "amazon.json"):
        assert (folder / name).read_bytes() == (tmp_path / "baby" / name).read_bytes(), name


def test_loads_and_trains_one_epoch(baby, tmp_path, capsys):
    from raymmrec import cli

    folder, record = baby
    data = load_dataset(str(folder))
    steps = record["interactions"]
    assert (data.n_users, data.n_items) == (steps["users"], steps["items"])
    assert (len(data.train), len(data.valid), len(data.test)) == (steps["train"], steps["valid"], steps["test"])
    assert set(data.features) == {"text", "image"}
    assert cli.main(["train", "--method", "bpr", "--data", str(folder), "--epochs", "1", "--no-progress",
                     "--output-dir", str(tmp_path / "runs")]) == 0
    assert "recall@20" in capsys.readouterr().out


def test_2023_release(raw, tmp_path):
    record = build(raw, tmp_path / "baby23", release=2023, kcore=3)
    inter, users, items = read_folder(tmp_path / "baby23")
    assert set(items) <= set(ITEMS + RARE) and not (tmp_path / "baby23" / "image_feat.npy").exists()
    expected = mmrec_kcore(first_pairs(ROWS), k=3)
    assert len(inter) == len(expected) and record["kcore"] == 3
    assert sorted(inter["timestamp"]) == sorted(t for _, _, _, t in expected)  # milliseconds -> seconds
    text = np.load(tmp_path / "baby23" / "text_feat.npy")
    k = list(items).index(ITEMS[7])
    np.testing.assert_allclose(text[k], HashText.vector("Soft toy 7 Store1 Baby Toys 3 A toy for babies, number 7."))


# --------------------------------------------------------------------------------------------- errors
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_bad_line_one_error_nothing_written(raw, tmp_path, capsys):
    ratings = tmp_path / "ratings_Bad.csv"
    lines = raw["ratings_Baby.csv"].read_text().splitlines()
    lines[6] = "A001XYZ,B000000001,five,1300000000"
    ratings.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "bad"
    args = ["amazon", "--ratings", str(ratings), "--meta", str(raw["meta_Baby.json.gz"]), "--out", str(out),
            "--local", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {ratings}: line 7: rating: expected a number, got 'five' (--skip-bad-lines counts "
                   "and skips such lines)"]
    assert _leftovers(out.parent) == []  # no folder, no temporary folder beside it
    # the same line skipped and counted
    record = build_amazon(Sources(ratings=str(ratings)), str(out),
                          Options(local=True, progress=False, skip_bad_lines=True))
    assert record["interactions"]["bad_lines"] == 1 and _leftovers(out.parent) == ["bad"]


def test_late_failure_leaves_nothing(raw, tmp_path):
    cut = tmp_path / "image_features_Cut.b"
    cut.write_bytes(raw["image_features_Baby.b"].read_bytes()[:-5])
    src = Sources(ratings=str(raw["ratings_Baby.csv"]), meta=str(raw["meta_Baby.json.gz"]), images=str(cut))
    with pytest.raises(DataError, match=r"image_features_Cut\.b: record \d+: cut off"):
        build_amazon(src, str(tmp_path / "out" / "baby"), Options(local=True, progress=False, text_factory=HashText))
    assert _leftovers(tmp_path / "out") == []  # the text features were written, in a folder now gone


def test_overwrite_only_a_dataset(baby, raw, tmp_path):
    out = tmp_path / "baby"
    build(raw, out, kcore=3)
    with pytest.raises(Exception, match="the folder is not empty; pass --overwrite"):
        build(raw, out)
    build(raw, out, overwrite=True)
    assert (out / "baby.inter").read_bytes() == (baby[0] / "baby.inter").read_bytes()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="refusing to overwrite a folder that holds notes.txt"):
        build(raw, out, overwrite=True)
    assert (out / "notes.txt").exists() and (out / "baby.inter").exists()


def test_cli_checks_arguments(raw, tmp_path, capsys):
    base = ["amazon", "--out", str(tmp_path / "x"), "--local"]
    assert main(base + ["--meta", str(raw["meta_Baby.json.gz"])]) == 2
    assert "give exactly one of --ratings" in capsys.readouterr().err
    assert main(base + ["--ratings", str(raw["ratings_Baby.csv"]), "--kcore", "2"]) == 2
    assert "--kcore: expected an integer >= 3" in capsys.readouterr().err
    assert main(base + ["--ratings", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "other.b").write_bytes(b"X" * 10 + bytes(4 * core.B_DIM))  # no item of ours
    assert main(base + ["--ratings", str(raw["ratings_Baby.csv"]), "--images", str(tmp_path / "in" / "other.b")]) == 2
    assert f"error: {tmp_path / 'in' / 'other.b'}: no record for any of the 30 items" in capsys.readouterr().err
    assert _leftovers(tmp_path) == ["in"]


# --------------------------------------------------------------------------------------------- Ray, S3, MiniLM
@pytest.fixture(scope="module")
def minilm():
    from raymmrec.features.encoders import TextEncoder

    return TextEncoder(device="cpu").load()


@pytest.mark.ray
def test_ray_build_on_s3_matches_one_process(ray_cluster, s3_bucket, raw, tmp_path, minilm):
    """Ray Data stages and MiniLM actors, written to S3: the same folder as one process with MiniLM."""
    import s3fs

    src = Sources(ratings=str(raw["ratings_Baby.csv"]), meta=str(raw["meta_Baby.json.gz"]),
                  images=str(raw["image_features_Baby.b"]))
    url = f"s3://{s3_bucket}/amazon-{tmp_path.name}/baby"
    build_amazon(src, url, Options(actors=1, cpus_per_actor=0.5, progress=False))
    build_amazon(src, str(tmp_path / "baby"), Options(local=True, progress=False, text_factory=lambda: minilm))
    fs = s3fs.S3FileSystem()
    remote = url.removeprefix("s3://")
    for name in ("baby.inter", "u_id_mapping.csv", "i_id_mapping.csv", "image_feat.npy", "amazon.json"):
        assert fs.cat_file(f"{remote}/{name}") == (tmp_path / "baby" / name).read_bytes(), name
    text = np.load(io.BytesIO(fs.cat_file(f"{remote}/text_feat.npy")))
    local = np.load(tmp_path / "baby" / "text_feat.npy")
    np.testing.assert_allclose(text, local, atol=1e-5)
    _, _, items = read_folder(tmp_path / "baby")
    k = list(items).index(ITEMS[7])
    np.testing.assert_allclose(local[k], minilm([core.item_text(_item_meta(ITEMS[7], 2014))])[0], atol=1e-5)
    data = load_dataset(url)
    assert data.features["text"].shape == (len(items), 384)

    bad = _gz(tmp_path / "meta_Evil.json.gz", [repr(_item_meta(ITEMS[0], 2014)), "__import__('os').system('x')"])
    with pytest.raises(DataError, match=r"meta_Evil\.json\.gz: line 2: expected a JSON object"):
        build_amazon(Sources(ratings=src.ratings, meta=str(bad)), str(tmp_path / "evil"),
                     Options(actors=1, cpus_per_actor=0.5, progress=False))
    assert not (tmp_path / "evil").exists()
