"""Feature extraction: catalogues, the text recipe, encoders, the atomic writer, appending, Ray Data actors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raymmrec.data.schema import DataError
from raymmrec.features import ImageEncoder, TextEncoder, extract, read_catalog
from raymmrec.features.catalog import item_texts
from raymmrec.features.extract import encode_frame
from raymmrec.features.writer import feature_path, manifest_path

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'raymmrec[features]'")

ITEMS = pd.DataFrame({
    "itemID": [2, 0, 3, 1],  # shuffled on purpose: features come out in item-id order
    "title": ["Blue hat", "Red shoe", None, "Green scarf"],
    "brand": ["Hatco", "Acme", None, ""],
    "categories": ["['Hats']", "[['Clothing', 'Shoes', 'Running']]", None, "[['Accessories']]"],
    "description": ["", "Light\nand fast.", None, "Wool."],
})


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(device="cpu").load()


@pytest.fixture(scope="module")
def image_encoder():
    return ImageEncoder(device="cpu").load()


def _jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image")
    return {"cat": skimage_data.chelsea(), "coffee": skimage_data.coffee(), "rocket": skimage_data.rocket()}


def test_text_recipe_and_tiny_catalogue(tmp_path, text_encoder):
    ITEMS.to_csv(tmp_path / "items.csv", index=False)
    frame = read_catalog(str(tmp_path / "items.csv"), "text")
    assert frame["itemID"].tolist() == [0, 1, 2, 3]
    assert frame["input"].tolist() == ["Red shoe Acme Clothing Shoes Running Light and fast.",
                                       "Green scarf Accessories Wool.", "Blue hat Hatco Hats", ""]
    assert item_texts(ITEMS, ["brand", "title"])[0] == "Hatco Blue hat"

    manifest = extract(str(tmp_path / "items.csv"), str(tmp_path / "ds"), "text", encoder=text_encoder,
                       progress=False)
    feats = np.load(tmp_path / "ds" / "text_feat.npy")
    assert feats.shape == (4, 384) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:3], text_encoder(frame["input"].tolist()[:3]), atol=1e-5)
    np.testing.assert_allclose(feats[3], feats[:3].mean(axis=0), atol=1e-6)  # empty text: the mean
    assert manifest["missing"] == {"count": 1, "ids": [3]} and manifest["rows"] == 4
    on_disk = json.loads((tmp_path / "ds" / "text_feat.manifest.json").read_text())
    assert on_disk["encoder"]["name"] == "all-MiniLM-L6-v2" and on_disk["dim"] == 384


@pytest.mark.slow
def test_lfm2k_text_reproduced(shared_data, text_encoder):
    """The shipped lfm2k text features are all-MiniLM-L6-v2 of item_text.tsv's ``text`` column as it is.

    A fixed subset (every 14th item) keeps the test short; the whole table was checked once by hand."""
    tsv = shared_data / "lfm2k" / "item_text.tsv"
    if not tsv.exists():
        pytest.skip(f"{tsv} not present")
    reference = np.load(shared_data / "lfm2k" / "text_feat.npy")
    frame = read_catalog(str(tsv), "text")
    assert frame.attrs["columns"] == ["text"] and len(frame) == reference.shape[0]
    subset = frame.iloc[::14]
    feats, failures = encode_frame(subset, text_encoder, batch_size=64)
    ref = reference[subset["itemID"].to_numpy()]
    cos = (feats * ref).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref, axis=1)
    assert not failures and cos.min() >= 0.9999, cos.min()


def test_image_preprocessing_names_sample_images(image_encoder, images):
    """The classifier head on the pooled features names well-known pictures sensibly (top-3)."""
    top, prob = image_encoder.top_classes(list(images.values()), k=3)
    expected = {"cat": set(range(281, 286)), "coffee": {967, 968, 504}, "rocket": {657, 744}}
    for (name, allowed), row in zip(expected.items(), top):
        assert row[0] in allowed, (name, row)
    assert prob[:, 0].min() > 0.2
    assert image_encoder.classify([images["coffee"]], k=1)[0][0][0] == "espresso"


def test_missing_and_broken_images_get_the_mean(tmp_path, image_encoder, images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "0.jpg").write_bytes(_jpeg(images["cat"]))
    (folder / "1.jpg").write_bytes(_jpeg(images["coffee"]))
    (folder / "3.jpg").write_bytes(b"not an image at all")  # broken
    (folder / "4.jpg").write_bytes(_jpeg(images["rocket"])[:2000])  # truncated
    # no 2.jpg: missing
    manifest = extract(str(folder), str(tmp_path / "ds"), "image", encoder=image_encoder, progress=False)
    feats = np.load(tmp_path / "ds" / "image_feat.npy")
    assert feats.shape == (5, 1280)
    for i in (2, 3, 4):
        np.testing.assert_allclose(feats[i], feats[[0, 1]].mean(axis=0), atol=1e-6)
    assert manifest["missing"]["ids"] == [2] and manifest["broken"]["ids"] == [3, 4]
    assert set(manifest["runs"][0]["errors"]) == {"2", "3", "4"}
    assert manifest["encoder"]["preprocessing"]["center_crop"] == 224


def test_failed_or_killed_write_leaves_old_features(tmp_path, monkeypatch):
    from raymmrec.features import writer

    old = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(feature_path(str(tmp_path), "text"), old)
    before = (tmp_path / "text_feat.npy").read_bytes()
    enc = {"name": "x", "version": "1", "dim": 4, "preprocessing": {}}

    def failing_save(f, *a, **k):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(writer.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        writer.write_features(str(tmp_path), "text", np.arange(3), np.ones((3, 4)), {}, enc, seconds=1.0)
    monkeypatch.undo()
    assert (tmp_path / "text_feat.npy").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["text_feat.npy"]  # no temporary file left, no manifest

    # a process killed (SIGKILL) halfway through writing the new file
    script = ("import sys, os, signal, numpy as np\n"
              "from raymmrec.features.writer import _write_atomic\n"
              "from fsspec.implementations.local import LocalFileSystem\n"
              "def fill(f):\n    f.write(b'half a file'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
              "_write_atomic(LocalFileSystem(), sys.argv[1], fill)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "text_feat.npy")],
                          cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    np.testing.assert_array_equal(np.load(tmp_path / "text_feat.npy"), old)


def test_append_new_items(tmp_path, text_encoder):
    out = str(tmp_path / "ds")
    first = pd.DataFrame({"itemID": [0, 1, 2], "text": ["a red shoe", "a blue hat", "a green scarf"]})
    first.to_csv(tmp_path / "a.csv", index=False)
    extract(str(tmp_path / "a.csv"), out, "text", encoder=text_encoder, progress=False)
    before = np.load(feature_path(out, "text"))

    pd.DataFrame({"itemID": [4, 3], "text": ["wool socks", "a yellow raincoat"]}).to_csv(tmp_path / "b.csv",
                                                                                         index=False)
    manifest = extract(str(tmp_path / "b.csv"), out, "text", encoder=text_encoder, progress=False)
    after = np.load(feature_path(out, "text"))
    assert after.shape == (5, 384) and manifest["rows"] == 5
    np.testing.assert_array_equal(after[:3], before)
    np.testing.assert_allclose(after[3:], text_encoder(["a yellow raincoat", "wool socks"]), atol=1e-5)
    assert [r["mode"] for r in manifest["runs"]] == ["replace", "append"]

    pd.DataFrame({"itemID": [7, 8], "text": ["x", "y"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match=r"continue it from 5 \(append\); got 2 ids from 7 to 8"):
        extract(str(tmp_path / "c.csv"), out, "text", encoder=text_encoder, progress=False)
    assert np.load(feature_path(out, "text")).shape == (5, 384)
    path = Path(manifest_path(out, "text"))
    manifest = json.loads(path.read_text())
    manifest["encoder"]["name"] = "another-model"
    path.write_text(json.dumps(manifest))
    pd.DataFrame({"itemID": [5], "text": ["z"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match="made by 'another-model'"):
        extract(str(tmp_path / "d.csv"), out, "text", encoder=text_encoder, progress=False)


def test_cli_local_and_one_line_errors(tmp_path, capsys, images):
    from raymmrec.ray.features import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "0.png").write_bytes(_jpeg(images["coffee"]))
    (folder / "1.jpg").write_bytes(_jpeg(images["cat"]))
    assert main(["--catalog", str(folder), "--out", str(tmp_path / "ds"), "--modality", "image", "--local"]) == 0
    assert "image_feat.npy: 2 x 1280 (replace: items 0..1" in capsys.readouterr().out
    (folder / "notes.txt").write_text("hello")
    assert main(["--catalog", str(folder), "--out", str(tmp_path / "ds"), "--modality", "image", "--local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "'notes.txt' is not named <itemID>.<ext>" in err[-1]
    pd.DataFrame({"id": [0]}).to_parquet(tmp_path / "items.parquet")
    assert main(["--catalog", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "ds"),
                 "--modality", "text", "--local"]) == 2
    assert "no 'itemID' column" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_ray_two_actors_images_on_s3(ray_cluster, s3_bucket, tmp_path, images, image_encoder):
    """Ray Data with 2 encoder actors reads images from S3, writes to S3, and matches one process."""
    import s3fs

    from raymmrec.ray.features import extract_ray

    fs = s3fs.S3FileSystem()
    base = f"{s3_bucket}/features-{tmp_path.name}"
    pics = [images["cat"], images["coffee"], images["rocket"], images["cat"][::-1]]
    for i, arr in enumerate(pics):
        fs.pipe_file(f"{base}/imgs/{i}.jpg", _jpeg(np.ascontiguousarray(arr)))
    fs.pipe_file(f"{base}/imgs/5.jpg", b"broken")
    manifest = extract_ray(f"s3://{base}/imgs", f"s3://{base}/ds", "image", actors=2, batch_size=2,
                           cpus_per_actor=0.5, progress=False)
    feats = np.load(io.BytesIO(fs.cat_file(f"{base}/ds/image_feat.npy")))
    assert feats.shape == (6, 1280) and manifest["missing"]["ids"] == [4] and manifest["broken"]["ids"] == [5]
    local = image_encoder([_jpeg(np.ascontiguousarray(a)) for a in pics])
    np.testing.assert_allclose(feats[:4], local, atol=1e-4)
    np.testing.assert_allclose(feats[4], local.mean(axis=0), atol=1e-4)

    # image bytes in a Parquet file (rows out of order, one null) read by Ray Data's read_parquet
    jpegs = [_jpeg(np.ascontiguousarray(a)) for a in pics] + [None, b"broken"]
    order = [3, 0, 5, 1, 4, 2]
    buf = io.BytesIO()
    pd.DataFrame({"itemID": order, "image": [jpegs[i] for i in order]}).to_parquet(buf)
    fs.pipe_file(f"{base}/items.parquet", buf.getvalue())
    manifest = extract_ray(f"s3://{base}/items.parquet", f"s3://{base}/ds2", "image", actors=2, batch_size=2,
                           cpus_per_actor=0.5, progress=False)
    assert manifest["missing"]["ids"] == [4] and manifest["broken"]["ids"] == [5]
    np.testing.assert_allclose(np.load(io.BytesIO(fs.cat_file(f"{base}/ds2/image_feat.npy"))), feats, atol=1e-5)


def test_demo_catalogue_is_a_dataset_whose_images_carry_the_preference(tmp_path):
    from PIL import Image

    from raymmrec.data import load_dataset
    from raymmrec.features.demo import COLOURS, make_demo

    folder = make_demo(tmp_path / "demo", n_items=48, n_users=8)
    data = load_dataset(str(folder))
    assert (data.n_users, data.n_items, len(data.train), len(data.valid), len(data.test)) == (8, 48, 64, 16, 16)
    # every user's items share one colour, and that colour is drawn in each item's picture
    for u in range(8):
        items = set(data.train.items[data.train.users == u]) | set(data.test.items[data.test.users == u])
        assert {i % len(COLOURS) for i in items} == {u % len(COLOURS)}
    rgb = np.asarray(Image.open(folder / "images" / "0.png"))
    assert (np.abs(rgb.astype(int) - COLOURS["red"]).sum(-1) < 10).mean() > 0.02
