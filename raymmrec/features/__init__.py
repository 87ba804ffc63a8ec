"""Multimodal feature extraction: item catalogues -> ``<modality>_feat.npy`` + manifest (no Ray here).

* :mod:`~raymmrec.features.catalog`: reading ``items.parquet`` / ``items.tsv`` / ``.csv`` / a folder of
  ``<itemID>.<ext>`` images (local or s3), and the text recipe;
* :mod:`~raymmrec.features.encoders`: text (all-MiniLM-L6-v2), image (EfficientNet-Lite0) and image-to-text
  (a captioner + the text encoder) encoders;
* :mod:`~raymmrec.features.writer`: the feature file and its manifest, replaced or appended atomically;
* :mod:`~raymmrec.features.extract`: all of it in one process, with progress.

The Ray Data version is :mod:`raymmrec.ray.features` (``raymmrec features``).
"""

from raymmrec.features.catalog import read_catalog, read_table
from raymmrec.features.encoders import (
    Encoder,
    Image2TextEncoder,
    ImageEncoder,
    LabelCaptioner,
    TextEncoder,
    make_encoder,
)
from raymmrec.features.extract import extract
from raymmrec.features.writer import read_manifest, write_features

__all__ = ["Encoder", "Image2TextEncoder", "ImageEncoder", "LabelCaptioner", "TextEncoder", "extract",
           "make_encoder", "read_catalog", "read_manifest", "read_table", "write_features"]
