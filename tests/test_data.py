"""Tests of raymmrec.data: MMRec folders, validation, filters, columnar form (local and S3), synthetic data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raymmrec.data import (
    BUILTIN_NAMES,
    PRESETS,
    DataError,
    RecData,
    load_dataset,
    make_synthetic,
    mmrec_split,
    read_columnar,
    read_mmrec,
    split_sizes,
    train_parquet_path,
    validate_recdata,
    write_columnar,
    write_mmrec,
)
from raymmrec.data.synthetic import generate_synthetic

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --------------------------------------------------------------------------------------------- helpers
def tiny(seed: int = 0) -> RecData:
    """The tiny preset, with text feature column 0 set to the item id so re-indexing can be traced."""
    data = generate_synthetic(PRESETS["tiny"], seed, "tiny")[0]
    data.features["text"][:, 0] = np.arange(data.n_items, dtype=np.float32)
    return data


def assert_same(a: RecData, b: RecData) -> None:
    assert (a.name, a.n_users, a.n_items) == (b.name, b.n_users, b.n_items)
    for s in ("train", "valid", "test"):
        pa = sorted(zip(a.split(s).users.tolist(), a.split(s).items.tolist(), strict=True))
        pb = sorted(zip(b.split(s).users.tolist(), b.split(s).items.tolist(), strict=True))
        assert pa == pb, s
        assert b.split(s).users.dtype == np.int64
    assert list(a.features) == list(b.features)
    for m in a.features:
        assert b.features[m].dtype == np.float32
        np.testing.assert_array_equal(a.features[m], b.features[m])


def counts(data: RecData) -> tuple[np.ndarray, np.ndarray]:
    users = np.concatenate([data.train.users, data.valid.users, data.test.users])
    items = np.concatenate([data.train.items, data.valid.items, data.test.items])
    return np.bincount(users, minlength=data.n_users), np.bincount(items, minlength=data.n_items)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A valid MMRec folder holding the tiny dataset (``tiny.inter``, ``text_feat.npy``, ``image_feat.npy``)."""
    write_mmrec(tiny(), str(tmp_path / "ds"))
    return tmp_path / "ds"


def edit_inter(folder: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    path = folder / "tiny.inter"
    frame = fn(pd.read_csv(path, sep="\t"))
    frame.to_csv(path, sep="\t", index=False)
    return frame


# --------------------------------------------------------------------------------------------- round trips
def test_mmrec_columnar_round_trip(folder: Path, tmp_path: Path) -> None:
    original = tiny()
    from_mmrec = read_mmrec(str(folder))
    assert_same(original, from_mmrec)
    out = write_columnar(from_mmrec, str(tmp_path / "col"), source="test")
    assert sorted(os.listdir(out)) == ["features", "meta.json", "test.parquet", "train.parquet", "valid.parquet"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    assert_same(original, read_columnar(out))
    assert_same(original, load_dataset(str(tmp_path / "col")))
    assert_same(original, load_dataset(str(folder)))
    import pyarrow.parquet as pq

    table = pq.read_table(train_parquet_path(out))
    assert table.schema.names == ["user", "item"] and str(table.schema.field("user").type) == "int64"
    assert table.num_rows == len(original.train)


def test_columnar_overwrite_and_incomplete(tmp_path: Path) -> None:
    a, b = tiny(0), tiny(1)
    target = str(tmp_path / "col")
    write_columnar(a, target)
    write_columnar(b, target, overwrite=False)  # kept: already complete
    assert_same(a, read_columnar(target))
    write_columnar(b, target)
    assert_same(b, read_columnar(target))
    os.remove(tmp_path / "col" / "meta.json")
    with pytest.raises(DataError, match="no meta.json.*incomplete"):
        load_dataset(target)


def test_columnar_overwrite_replaces_only_our_datasets(tmp_path: Path) -> None:
    data = tiny()
    target = tmp_path / "col"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    for overwrite in (True, False):
        with pytest.raises(DataError, match=rf"{target}: refusing to overwrite: .*\(notes\.txt\); expected only"):
            write_columnar(data, str(target), overwrite=overwrite)
        assert os.listdir(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"
    os.remove(target / "notes.txt")
    write_columnar(data, str(target))  # an empty folder may be filled
    assert_same(data, read_columnar(str(target)))
    two = tiny(1)
    del two.features["image"]
    write_columnar(two, str(target))  # a dataset of ours is replaced, stale files included
    assert_same(two, read_columnar(str(target)))
    assert os.listdir(target / "features") == ["text.npy"]
    (target / "features" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"refusing to overwrite: .*\(features/readme\.md\)"):
        write_columnar(data, str(target))
    assert (target / "features" / "readme.md").exists()

    other = tmp_path / "other"  # someone else's meta.json and parquet files
    other.mkdir()
    (other / "meta.json").write_text('{"format": "someone-else"}')
    shutil.copy(target / "train.parquet", other / "train.parquet")
    with pytest.raises(DataError, match=r"refusing to overwrite: its meta\.json has format 'someone-else'"):
        write_columnar(data, str(other))
    os.remove(other / "meta.json")
    with pytest.raises(DataError, match=r"refusing to overwrite: no meta\.json"):
        write_columnar(data, str(other))
    assert sorted(os.listdir(other)) == ["train.parquet"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"file: exists and is not a folder"):
        write_columnar(data, str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_modality_selection(folder: Path) -> None:
    assert list(read_mmrec(str(folder), modalities=["image"]).features) == ["image"]
    assert read_mmrec(str(folder), modalities=[]).features == {}
    with pytest.raises(DataError, match=r"modality 'audio' not found; available modalities: \['image', 'text'\]"):
        read_mmrec(str(folder), modalities=["audio"])
    (folder / "dataset.yaml").write_text("modalities: [text]\n")
    assert list(read_mmrec(str(folder)).features) == ["text"]
    (folder / "dataset.yaml").write_text("modalities: [video]\n")
    with pytest.raises(DataError, match="dataset.yaml: modality 'video' not found"):
        read_mmrec(str(folder))
    for f in ("dataset.yaml", "text_feat.npy", "image_feat.npy"):
        os.remove(folder / f)
    data = read_mmrec(str(folder))  # ID-only datasets are allowed
    assert data.features == {} and data.n_items == 30


# --------------------------------------------------------------------------------------------- validation
def _bad_dense(f: pd.DataFrame) -> pd.DataFrame:
    return f[f.itemID != 5]


def _set(col: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(f: pd.DataFrame) -> pd.DataFrame:
        f[col] = f[col].astype(object)
        f.loc[row, col] = value
        return f

    return fn


def _cold_user(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[(f.userID == 7) & (f.x_label == 0), "x_label"] = 1
    return f


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (
            lambda f: f.rename(columns={"userID": "user_id"}),
            r"tiny\.inter: missing column\(s\) \['userID'\].*expected.*found \['user_id', 'itemID'",
        ),
        (_set("itemID", 4, "abc"), r"tiny\.inter: column 'itemID' must hold non-negative integers.*; line 6 has 'abc'"),
        (_set("userID", 2, -1), r"tiny\.inter: column 'userID' must hold non-negative integers.*; line 4 has -1"),
        (_set("userID", 3, 2.5), r"tiny\.inter: column 'userID' .* line 5 has 2\.5"),
        (_bad_dense, r"tiny\.inter: itemID ids must be dense 0\.\.29.*1 id\(s\) never appear: 5"),
        (
            _set("x_label", 9, 3),
            r"tiny\.inter: column 'x_label' must be 0 \(train\), 1 \(valid\) or 2 \(test\); line 11 has 3",
        ),
        (_cold_user, r"tiny\.inter: 1 user\(s\) have validation/test rows but no training rows: user ids 7"),
        (lambda f: f.assign(x_label=f.x_label.replace(1, 0)), r"tiny\.inter: the valid split is empty"),
    ],
    ids=["column", "non-int", "negative", "fraction", "not-dense", "x_label", "cold-user", "empty-split"],
)
def test_inter_errors(folder: Path, edit, pattern: str) -> None:
    edit_inter(folder, edit)
    with pytest.raises(DataError, match=pattern):
        read_mmrec(str(folder))


@pytest.mark.parametrize("value", [10**12, 2 * 10**9])
def test_huge_inter_id_is_a_data_error(folder: Path, value: int) -> None:
    import tracemalloc

    edit_inter(folder, _set("userID", 3, value))
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        with pytest.raises(DataError, match=rf"tiny\.inter: userID ids must be dense 0\.\.{value} .*41 distinct"):
            read_mmrec(str(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB: memory grew with the largest id"


@pytest.mark.parametrize("value", ["100000000000000000000", "10000000000000000000"])
def test_inter_id_beyond_int64(folder: Path, value: str) -> None:
    edit_inter(folder, _set("itemID", 2, value))
    pattern = rf"tiny\.inter: column 'itemID' must hold non-negative integers below 2\*\*63; line 4 has {value}"
    with pytest.raises(DataError, match=pattern):
        read_mmrec(str(folder))


@pytest.mark.parametrize("content", ["", "userID\titemID\trating\ttimestamp\tx_label\n"], ids=["zero-bytes", "header"])
def test_empty_inter_file(folder: Path, content: str) -> None:
    (folder / "tiny.inter").write_text(content)
    with pytest.raises(DataError, match=r"tiny\.inter: no interaction rows"):
        read_mmrec(str(folder))


def _rewrite_parquet(path: Path, column: str, values: object) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(column), column, pa.array(values))
    pq.write_table(table, path)


def test_columnar_ids_checked_against_meta(tmp_path: Path) -> None:
    import json

    data = tiny()
    out = Path(write_columnar(data, str(tmp_path / "col")))
    _rewrite_parquet(out / "train.parquet", "user", [10**12] + data.train.users[1:].tolist())
    with pytest.raises(
        DataError,
        match=r"train\.parquet: column 'user' must hold ids in \[0, 40\) \(meta\.json says n_users = 40\), "
        r"but row 0 \(0-based\) has 1000000000000 \(1 bad row",
    ):
        read_columnar(str(out))
    _rewrite_parquet(out / "train.parquet", "user", data.train.users)
    _rewrite_parquet(out / "test.parquet", "item", [-1] + data.test.items[1:].tolist())
    with pytest.raises(DataError, match=r"test\.parquet: column 'item' must hold ids in \[0, 30\).*row 0 .* has -1"):
        read_columnar(str(out))
    _rewrite_parquet(out / "test.parquet", "item", [None] + data.test.items[1:].tolist())
    with pytest.raises(DataError, match=r"test\.parquet: column 'item' must hold integer ids without nulls.*1 null"):
        read_columnar(str(out))
    _rewrite_parquet(out / "test.parquet", "item", data.test.items.astype(float))
    with pytest.raises(DataError, match=r"test\.parquet: column 'item' must hold integer ids.*type double"):
        read_columnar(str(out))
    _rewrite_parquet(out / "test.parquet", "item", data.test.items)
    assert_same(data, read_columnar(str(out)))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "n_users": "40"}))
    with pytest.raises(DataError, match=r"meta\.json: n_users must be a non-negative integer, found '40'"):
        read_columnar(str(out))


def test_feature_errors(folder: Path) -> None:
    text = np.load(folder / "text_feat.npy")
    bad = text.copy()
    bad[3, 1] = np.nan
    np.save(folder / "text_feat.npy", bad)
    with pytest.raises(DataError, match=r"text_feat\.npy: text features contain NaN or inf; first bad row \(item\) 3"):
        read_mmrec(str(folder))
    bad[3, 1], bad[17, 0] = 0, np.inf
    np.save(folder / "text_feat.npy", bad)
    with pytest.raises(DataError, match=r"first bad row \(item\) 17"):
        read_mmrec(str(folder))
    np.save(folder / "text_feat.npy", text[:-1])
    with pytest.raises(
        DataError, match=r"text_feat\.npy: text features have 29 rows but the interactions have 30 items"
    ):
        read_mmrec(str(folder))
    np.save(folder / "text_feat.npy", np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"text_feat\.npy: cannot load.*allow_pickle=False"):
        read_mmrec(str(folder))


def test_inter_file_count(folder: Path) -> None:
    shutil.copy(folder / "tiny.inter", folder / "other.inter")
    with pytest.raises(
        DataError, match=r"expected exactly one <name>\.inter file, found 2: \['other\.inter', 'tiny\.inter'\]"
    ):
        read_mmrec(str(folder))
    os.remove(folder / "other.inter")
    os.remove(folder / "tiny.inter")
    with pytest.raises(DataError, match="found 0"):
        read_mmrec(str(folder))


def test_duplicates_warn_and_drop(folder: Path) -> None:
    frame = edit_inter(folder, lambda f: pd.concat([f, f.iloc[[0, 5]].assign(x_label=2)], ignore_index=True))
    with pytest.warns(
        UserWarning, match=r"tiny\.inter: dropped 2 duplicate \(user, item\) row\(s\), keeping the first"
    ):
        data = read_mmrec(str(folder))
    assert len(data.train) + len(data.valid) + len(data.test) == len(frame) - 2
    assert_same(tiny(), data)  # the first copies (with their original labels) were kept


def test_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'movielens'.*ml100k, synthetic, synthetic:tiny"):
        load_dataset("movielens")
    with pytest.raises(DataError, match="does not exist; built-in datasets: ml100k"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="unknown synthetic preset 'huge'"):
        load_dataset("synthetic:huge")
    assert "synthetic:baby" in BUILTIN_NAMES and "synthetic:clothing" in BUILTIN_NAMES


# --------------------------------------------------------------------------------------------- filters
def test_rating_threshold(folder: Path) -> None:
    rng = np.random.default_rng(3)
    frame = edit_inter(folder, lambda f: f.assign(rating=rng.integers(0, 2, len(f))))
    kept = frame[frame.rating >= 1]
    with pytest.warns(UserWarning, match="validation/test row"):  # some users lose all their training rows
        data = read_mmrec(str(folder), rating_threshold=1)
    validate_recdata(data)  # dense ids, no cold users, features aligned
    train_users = set(kept.userID[kept.x_label == 0])
    expect = kept[(kept.x_label == 0) | kept.userID.isin(train_users)]
    assert len(data.train) + len(data.valid) + len(data.test) == len(expect)
    old_items = np.unique(expect.itemID)
    assert data.n_items == old_items.size and data.n_users == expect.userID.nunique()
    np.testing.assert_array_equal(data.features["text"][:, 0], old_items)  # rows follow the re-indexing
    with pytest.raises(DataError, match="rating_threshold=1 needs a rating column"):
        load_dataset("synthetic:tiny", rating_threshold=1)


def _naive_kcore(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    while True:
        uc, ic = frame.userID.value_counts(), frame.itemID.value_counts()
        keep = frame.userID.map(uc).ge(k) & frame.itemID.map(ic).ge(k)
        if keep.all():
            return frame
        frame = frame[keep]


def test_kcore(tmp_path: Path) -> None:
    data = make_synthetic(300, 200, 4000, {"text": 4}, seed=5, name="kc")
    data.features["text"][:, 0] = np.arange(data.n_items)
    write_mmrec(data, str(tmp_path / "kc"))
    raw = pd.read_csv(tmp_path / "kc" / "kc.inter", sep="\t")
    out = read_mmrec(str(tmp_path / "kc"), kcore=8)
    validate_recdata(out)
    uc, ic = counts(out)
    assert uc.min() >= 8 and ic.min() >= 8 and out.n_users < data.n_users
    expect = _naive_kcore(raw, 8)  # no user of this k-core lacks training rows, so nothing else is dropped
    assert (out.n_users, out.n_items) == (expect.userID.nunique(), expect.itemID.nunique())
    np.testing.assert_array_equal(out.features["text"][:, 0], np.unique(expect.itemID))
    assert len(out.train) + len(out.valid) + len(out.test) == len(expect)
    again = load_dataset("synthetic:tiny", kcore=4)
    uc, ic = counts(again)
    assert uc.min() >= 4 and ic.min() >= 4 and len(uc) == again.n_users


# --------------------------------------------------------------------------------------------- synthetic + split
def test_split_rule() -> None:
    sizes = np.array([3, 5, 9, 10, 14, 15, 25, 101])
    users = np.repeat(np.arange(sizes.size), sizes)
    labels = mmrec_split(users, seed=0)
    got = np.stack([np.bincount(users[labels == c], minlength=sizes.size) for c in range(3)], axis=1)
    expect = [[1, 1, 1], [3, 1, 1], [7, 1, 1], [8, 1, 1], [12, 1, 1], [12, 1, 2], [20, 2, 3], [81, 10, 10]]
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(np.stack(split_sizes(sizes), axis=1), expect)
    assert not np.array_equal(labels, mmrec_split(users, seed=1))  # random within a user
    np.testing.assert_array_equal(labels, mmrec_split(users, seed=0))


@pytest.mark.parametrize("preset", ["tiny", "small", "baby"])
def test_synthetic_sizes(preset: str) -> None:
    spec = PRESETS[preset]
    data = load_dataset("synthetic" if preset == "small" else f"synthetic:{preset}", seed=7)
    validate_recdata(data)  # dense, no duplicates, every user has training rows, finite features
    uc, ic = counts(data)
    assert (data.n_users, data.n_items, uc.sum()) == (spec.n_users, spec.n_items, spec.n_interactions)
    assert uc.min() >= 3 and ic.min() >= 1
    assert {m: f.shape for m, f in data.features.items()} == {m: (spec.n_items, d) for m, d in spec.dims.items()}
    expect = np.stack(split_sizes(uc), axis=1)
    got = np.stack([np.bincount(data.split(s).users, minlength=data.n_users) for s in ("train", "valid", "test")], 1)
    np.testing.assert_array_equal(got, expect)


def test_synthetic_exact_custom_and_deterministic() -> None:
    a = make_synthetic(123, 77, 1000, {"audio": 5}, seed=1)
    assert counts(a)[0].sum() == 1000 and a.features["audio"].shape == (77, 5)
    assert_same(a, make_synthetic(123, 77, 1000, {"audio": 5}, seed=1))
    assert not np.array_equal(a.train.items, make_synthetic(123, 77, 1000, {"audio": 5}, seed=2).train.items)
    with pytest.raises(DataError, match="n_interactions=100 must lie in"):
        make_synthetic(50, 30, 100)


def test_synthetic_features_carry_signal() -> None:
    data, truth = generate_synthetic(PRESETS["small"], seed=3)
    m = np.zeros((data.n_users, data.n_items), dtype=np.float32)
    m[data.train.users, data.train.items] = 1
    shared = m.T @ m  # users shared by two items
    chance_same = np.mean(truth.item_cluster[:, None] == truth.item_cluster[None, :])
    rng = np.random.default_rng(0)
    rand = rng.integers(0, data.n_items, data.n_items)
    for name, feats in data.features.items():
        x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        nn = sim.argmax(1)
        assert np.mean(truth.item_cluster[nn] == truth.item_cluster) > max(0.8, 5 * chance_same), name
        idx = np.arange(data.n_items)
        assert shared[idx, nn].mean() > 2.5 * shared[idx, rand].mean(), name


# --------------------------------------------------------------------------------------------- real data
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared datasets not found at {SHARED_DATA}")


@needs_shared
def test_lfm2k_tiny() -> None:
    data = load_dataset(str(SHARED_DATA / "lfm2k_tiny"))
    validate_recdata(data)
    assert (data.n_users, data.n_items, len(data.train), len(data.valid), len(data.test)) == (200, 601, 4978, 518, 726)
    assert {m: f.shape[1] for m, f in data.features.items()} == {"audio_vggish": 128, "audio_whisper": 512, "text": 384}


@needs_shared
def test_dbbook_likes_only() -> None:
    raw = pd.read_csv(SHARED_DATA / "dbbook" / "dbbook.inter", sep="\t")
    with pytest.warns(UserWarning, match="dropped 18 validation/test row"):
        data = load_dataset(str(SHARED_DATA / "dbbook"), rating_threshold=1)
    validate_recdata(data)
    likes = raw[raw.rating == 1]
    assert len(data.train) == (likes.x_label == 0).sum()
    assert len(data.train) + len(data.valid) + len(data.test) == len(likes) - 18
    assert data.n_items == likes.itemID.nunique() and data.features["text"].shape == (data.n_items, 384)
    full = np.load(SHARED_DATA / "dbbook" / "text_feat.npy")
    np.testing.assert_array_equal(data.features["text"], full[np.unique(likes.itemID)])


# --------------------------------------------------------------------------------------------- S3 (moto)
# s3_bucket (tests/conftest.py): a local moto_server with bucket "raymmrec-test" and the AWS_* variables set.
def test_s3_columnar(s3_bucket: str) -> None:
    data = tiny()
    url = "s3://raymmrec-test/columnar/tiny"
    write_columnar(data, url)
    assert_same(data, read_columnar(url))
    assert_same(data, load_dataset(url, modalities=["text", "image"]))
    write_columnar(tiny(1), url)  # overwrite in place
    assert_same(tiny(1), load_dataset(url))
    import pyarrow.parquet as pq

    from raymmrec.data import arrow_filesystem

    fs, path = arrow_filesystem(train_parquet_path(url))
    assert pq.read_table(path, filesystem=fs).num_rows == len(tiny(1).train)
    assert pq.read_table(train_parquet_path(url)).num_rows == len(tiny(1).train)  # pyarrow's own S3 (Ray's path)
    from raymmrec.data.io import open_fs

    s3, prefix = open_fs(url)
    s3.rm(prefix + "/meta.json")
    with pytest.raises(DataError, match="no meta.json.*incomplete"):
        load_dataset(url)


def test_s3_columnar_overwrite_keeps_foreign_objects(s3_bucket: str) -> None:
    from raymmrec.data.io import open_fs

    s3, _ = open_fs("s3://raymmrec-test")
    s3.pipe({"raymmrec-test/shared/keep.txt": b"keep", "raymmrec-test/shared2/keep.txt": b"keep too"})
    s3.invalidate_cache()
    with pytest.raises(DataError, match=r"s3://raymmrec-test/shared: refusing to overwrite: .*\(keep\.txt\)"):
        write_columnar(tiny(), "s3://raymmrec-test/shared")
    url = "s3://raymmrec-test/shared2/ds"
    write_columnar(tiny(), url)
    two = tiny(1)
    del two.features["image"]
    write_columnar(two, url)  # ours: replaced, its stale image.npy removed
    assert_same(two, load_dataset(url))
    s3.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[1] for p in s3.find("raymmrec-test/shared2")) == [
        "keep.txt", "meta.json", "test.parquet", "text.npy", "train.parquet", "valid.parquet"
    ]
    assert s3.cat("raymmrec-test/shared/keep.txt") == b"keep"
    write_columnar(tiny(), "s3://raymmrec-test/shared2/d")  # a name that prefixes another dataset's name
    assert_same(tiny(), load_dataset("s3://raymmrec-test/shared2/d"))
    assert_same(two, load_dataset(url))


def test_s3_mmrec_folder(s3_bucket: str, tmp_path: Path) -> None:
    data = tiny()
    url = "s3://raymmrec-test/mmrec/tiny/"
    write_mmrec(data, url)
    assert_same(data, load_dataset(url))
    assert list(load_dataset(url, modalities=["image"]).features) == ["image"]


def test_tensors_stream_to_s3_and_a_failed_write_leaves_no_object(s3_bucket: str, monkeypatch) -> None:
    """``save_tensors`` streams a payload to a URL (best.pt, latest.pt); one that fails midway is aborted,
    not completed with what was written so far."""
    import s3fs
    import torch

    import raymmrec.files as files

    url = f"s3://{s3_bucket}/tensors/best.pt"
    files.save_tensors(url, {"w": torch.arange(6.0)})
    import io

    assert torch.equal(torch.load(io.BytesIO(files.read_bytes(url)), weights_only=True)["w"], torch.arange(6.0))
    real = torch.save

    def fails_midway(obj, f):  # noqa: ANN001
        f.write(b"x" * (6 << 20))  # past one upload part
        raise OSError("disk gone")

    monkeypatch.setattr(files.torch, "save", fails_midway)
    half = f"s3://{s3_bucket}/tensors/half.pt"
    with pytest.raises(OSError, match="disk gone"):
        files.save_tensors(half, {"w": torch.zeros(1)})
    monkeypatch.setattr(files.torch, "save", real)
    s3fs.S3FileSystem.clear_instance_cache()
    assert not s3fs.S3FileSystem().exists(half.removeprefix("s3://"))
