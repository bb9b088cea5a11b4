"""Image folders: ``train/<class>/*``, optional ``val/<class>/*`` and ``test/<class>/*``; given as a folder, a
``.tar.gz`` of one, or several of those joined by commas (``train.tar.gz,test.tar.gz``). Each source is decoded
once into a cached ``.npz`` (under ``$UNIPRUNE_CACHE`` or ``~/.cache/uniprune``), so the second load takes
seconds. Without a ``test/`` part a seeded test split is carved; with only a ``test/`` part the training
splits are empty (``eval --split test`` works)."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm
from uniprune.compressors.core.errors import DataError

from .bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    TEST_FRACTION,
    TEST_SEED,
    Arrays,
    DataBundle,
    Info,
    assemble,
    cache_root,
    require,
    split_indices,
)
from .registry import register

_CACHE_VERSION = 1
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def _member_key(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) of an image at ``.../[split/]class/file``; split ``""`` when the layout has none."""
    if len(parts) < 2 or parts[-1].startswith(".") or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
        return None
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[-3], parts[-2]
    return "", parts[-2]


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {where}: {exc}") from None


def _iter_images(source: Path) -> Iterator[tuple[tuple[str, str], str, bytes]]:
    """((split, class), path, file bytes) of every image file in a folder or a tar archive; other files
    are skipped unread."""
    if source.is_dir():
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            parts = file.relative_to(source).parts
            key = _member_key(parts)
            if key is not None:
                yield key, "/".join(parts), file.read_bytes()
        return
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                key = _member_key(Path(member.name).parts) if member.isfile() else None
                handle = tar.extractfile(member) if key is not None else None
                if handle is not None:
                    yield key, member.name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        first = " ".join(str(exc).split())[:160]  # tarfile lists every method it tried, one per line
        raise DataError(f"cannot read archive {source}: {first} (expected a .tar.gz of an image folder)") from None


def _source_signature(source: Path) -> str:
    """A cache key that changes when the source changes (path, sizes and modification times)."""
    source = source.resolve()  # the same data spelled as another relative path must hit the same cache
    h = hashlib.sha256(f"v{_CACHE_VERSION}:{source}".encode())
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _decode_source(source: Path, cache_dir: str | None) -> dict[str, np.ndarray]:
    """Decode every image of one folder/archive once; later calls read the cached ``.npz`` (seconds)."""
    cache = cache_root(cache_dir) / f"imagefolder-{source.name.split('.')[0]}-{_source_signature(source)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            pass  # a damaged cache is rebuilt below
    found: list[tuple[str, str, str, np.ndarray]] = []
    sizes: dict[tuple[int, ...], int] = {}
    bar = tqdm(_iter_images(source), desc=f"decoding {source.name} (once; cached)", unit=" images", file=sys.stderr, leave=False)
    for (split, cls), where, data in bar:
        img = _decode(data, f"{source}:{where}")
        sizes[img.shape] = sizes.get(img.shape, 0) + 1
        found.append((split, cls, where, img))
    if not found:
        raise DataError(f"no images found in {source} (expected [train|val|test/]<class>/<image> files)")
    shape = max(sizes, key=sizes.get)  # images of another size are resized to the most common one
    found.sort(key=lambda t: (t[0], t[1], t[2]))
    images = np.stack([_resize(img, shape) for *_, img in found]).transpose(0, 3, 1, 2)
    arrays = {
        "images": np.ascontiguousarray(images),
        "split": np.array([s for s, *_ in found]),
        "cls": np.array([c for _, c, *_ in found]),
    }
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, cache)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"uniprune: note: could not write the image cache {cache}: {exc}", file=sys.stderr)
    return arrays


def _resize(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if img.shape == shape:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.uint8)


@register("imagefolder")
def load_imagefolder(path: str | None, *, val_fraction: float, seed: int, cache_dir: str | None = None) -> DataBundle:
    """Class folders (``[train|val|test/]<class>/<image>``), as folders or .tar.gz, several joined by commas."""
    if not path:
        raise DataError(
            "dataset imagefolder needs --data: a folder with train/ and test/ class folders, a .tar.gz of one, "
            "or several joined by commas (train.tar.gz,test.tar.gz)"
        )
    sources = [Path(p.strip()).expanduser() for p in path.split(",") if p.strip()]
    for s in sources:
        require(s, "an image folder or a .tar.gz of one")
    parts = [_decode_source(s, cache_dir) for s in sources]
    shapes = {p["images"].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"the sources in {path} hold images of different sizes {sorted(shapes)}; give sources of one size")
    images = np.concatenate([p["images"] for p in parts])
    split = np.concatenate([p["split"] for p in parts])
    cls = np.concatenate([p["cls"] for p in parts])
    names = tuple(sorted(set(cls.tolist())))
    labels = np.searchsorted(np.array(names), cls).astype(np.int64)
    notes: list[str] = []
    empty_reason: dict[str, str] = {}
    has = {s: bool((split == s).any()) for s in ("", *SPLITS)}
    if has[""] and (has["train"] or has["test"]):
        raise DataError(f"{path} mixes class folders at the top with train/ or test/ folders; use one layout")
    if has[""]:
        _, test_idx = split_indices(len(split), TEST_FRACTION, TEST_SEED)
        split = np.full(len(split), "train", dtype="<U5")
        split[test_idx] = "test"
        notes.append(f"{path} has no train/ and test/ folders: a fixed 20 % of its images is the test split")
    if not (split == "train").any():
        hint = "the data has only a test/ part; add the training images, e.g. --data train.tar.gz,test.tar.gz"
        empty_reason = {"train": hint, "val": hint}
    if not (split == "test").any():
        empty_reason["test"] = "the data has no test/ part; add it, e.g. --data train.tar.gz,test.tar.gz"
    given_val = (split == "val").any()

    def sel(name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = split == name
        return images[mask], labels[mask]

    (tr_x, tr_y), (te_x, te_y), (va_x, va_y) = sel("train"), sel("test"), sel("val")
    channels = images.shape[1]
    stats = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (None, None)
    return assemble("imagefolder", Arrays((tr_x, tr_y), (te_x, te_y), (va_x, va_y) if given_val else None),
                    Info(source=path, num_classes=len(names), class_names=names, mean=stats[0], std=stats[1],
                         notes=tuple(notes), empty_reason=empty_reason), val_fraction=val_fraction, seed=seed)
