"""The data zoo: shapes, splits kept apart, batching, augmentation, every kind of source, and errors."""

from __future__ import annotations

import gzip
import pickle
import tarfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from uniprune.compressors.core.errors import DataError
from uniprune.search import datasets
from uniprune.search.datasets import IMAGENET_MEAN, IMAGENET_STD, KNOWN_DATASETS, load_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def _image_keys(split) -> set[bytes]:
    return {split.images[i].numpy().tobytes() for i in range(len(split))}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_and_disjoint_splits(digits):
    assert digits.input_shape == (3, 32, 32) and digits.num_classes == 10
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
    assert digits.train.images.dtype == torch.uint8 and digits.train.labels.dtype == torch.int64
    assert int(digits.train.images.max()) == 255  # 16 grey levels scaled to the full 0..255 range
    assert torch.equal(digits.train.images[:, 0], digits.train.images[:, 2])  # grey replicated to RGB
    train, val, test = _image_keys(digits.train), _image_keys(digits.val), _image_keys(digits.test)
    assert not (val & test) and not (train & test) and not (train & val)
    assert len(train) + len(val) + len(test) == 1797
    assert digits.hflip is False  # a mirrored digit is no digit


def test_digits_test_split_is_fixed_and_val_follows_the_seed(digits):
    other = load_dataset("digits", seed=7, val_fraction=0.2)
    assert torch.equal(other.test.images, digits.test.images) and other.mean == digits.mean
    assert torch.equal(other.test.labels, digits.test.labels)
    assert len(other.val) == round(0.2 * 1438)
    assert _image_keys(other.val) != _image_keys(digits.val)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 400), fraction=st.floats(0, 0.99), seed=st.integers(0, 2**31))
def test_seeded_carve_is_a_partition(n, fraction, seed):
    rest, carved = datasets.split_indices(n, fraction, seed)
    assert len(carved) == round(fraction * n)
    assert np.array_equal(np.sort(np.concatenate([rest, carved])), np.arange(n))
    again_rest, again_carved = datasets.split_indices(n, fraction, seed)
    assert np.array_equal(carved, again_carved) and np.array_equal(rest, again_rest)


def test_batches_normalise_cover_and_shuffle(digits):
    xs, ys = zip(*digits.batches("val", 50))
    assert [len(y) for y in ys] == [50, 50, 44] == [len(x) for x in xs]
    assert digits.num_batches("val", 50) == 3 and digits.num_batches("val", 50, limit=60) == 2
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and x.shape == (144, 3, 32, 32)
    expected = (digits.val.images.float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, expected, atol=1e-5)
    a = torch.cat([y for _, y in digits.batches("train", 64, shuffle=True, seed=3)])
    b = torch.cat([y for _, y in digits.batches("train", 64, shuffle=True, seed=3)])
    c = torch.cat([y for _, y in digits.batches("train", 64, shuffle=True, seed=4)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.sort(a).values, torch.sort(digits.train.labels).values)  # each sample once
    assert sum(len(y) for _, y in digits.batches("test", 100, limit=250)) == 250


def test_augment_is_a_padded_crop_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)  # no zeros, so padding shows
    out = datasets.augment_batch(x, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(16):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert plain or mirrored
        flipped += int(mirrored and not plain)
    assert 0 < flipped < 16
    no_flip = datasets.augment_batch(x, torch.Generator().manual_seed(1), flip=False)
    for i in range(16):
        assert any(torch.equal(no_flip[i], padded[i, :, r : r + 8, c : c + 8]) for r in range(9) for c in range(9))


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def test_fashion_mnist_reads_plain_and_gzipped_idx(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 28, 28)), compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(40) % 10, compress=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)), compress=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(12) % 10, compress=False)
    b = load_dataset("fashion-mnist", str(tmp_path), val_fraction=0.25)
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert (len(b.train), len(b.val), len(b.test)) == (30, 10, 12)
    assert len(b.mean) == 1 and 0.4 < b.mean[0] < 0.6  # uniform random pixels
    assert torch.equal(b.test.labels, torch.arange(12) % 10)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0c\x01")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion-mnist", str(tmp_path))
    with pytest.raises(DataError, match=r"path not found: .*nowhere"):
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))


def test_cifar10_python_batches(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    b = load_dataset("cifar10", str(tmp_path))  # the parent folder is accepted too
    assert (len(b.train) + len(b.val), len(b.test)) == (50, 10)
    assert b.input_shape == (3, 32, 32) and b.mean == IMAGENET_MEAN and b.std == IMAGENET_STD
    # a batch file whose pickle would run code is refused, and the code never runs
    class Payload:
        def __reduce__(self):
            return (print, ("uniprune-cifar-payload-ran",))

    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": Payload(), "labels": [0]}, fh)
    with pytest.raises(DataError, match="pickled code"):
        load_dataset("cifar10", str(folder))
    assert "uniprune-cifar-payload-ran" not in capsys.readouterr().out
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}, fh)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", str(folder))


def _image_tree(root, split: str | None, counts: dict[str, int], colour_of: dict[str, int]) -> None:
    for cls, n in counts.items():
        d = root / split / cls if split else root / cls
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (6, 6), (colour_of[cls], i, 0)).save(d / f"{i:03d}.png")


def _tar(folder, out):
    with tarfile.open(out, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
    return out


COLOURS = {"cat": 10, "dog": 200, "emu": 90}


def test_imagefolder_tarballs_decode_once(tmp_path, cache_dir):
    _image_tree(tmp_path / "tr", "train", {"cat": 6, "dog": 4, "emu": 5}, COLOURS)
    _image_tree(tmp_path / "te", "test", {"cat": 2, "dog": 3, "emu": 1}, COLOURS)
    train_tar = _tar(tmp_path / "tr", tmp_path / "train.tar.gz")
    test_tar = _tar(tmp_path / "te", tmp_path / "test.tar.gz")
    spec = f"{train_tar},{test_tar}"
    b = load_dataset("imagefolder", spec, val_fraction=0.2)
    assert b.class_names == ("cat", "dog", "emu") and b.num_classes == 3
    assert (len(b.train), len(b.val), len(b.test)) == (12, 3, 6)
    assert b.input_shape == (3, 6, 6) and b.mean == IMAGENET_MEAN
    red = b.test.images[:, 0, 0, 0]  # each class has its own red value: labels follow the folders
    assert torch.equal(red, torch.tensor([COLOURS[b.class_names[int(y)]] for y in b.test.labels], dtype=torch.uint8))
    caches = sorted(cache_dir.glob("imagefolder-*.npz"))
    assert len(caches) == 2
    written = [(c.stat().st_ino, c.stat().st_mtime_ns) for c in caches]
    again = load_dataset("imagefolder", spec, val_fraction=0.2)
    assert [(c.stat().st_ino, c.stat().st_mtime_ns) for c in caches] == written  # read from the cache, not decoded again
    assert torch.equal(again.test.images, b.test.images) and torch.equal(again.train.labels, b.train.labels)

    only_test = load_dataset("imagefolder", str(test_tar))
    assert len(only_test.test) == 6 and len(only_test.train) == 0
    with pytest.raises(DataError, match="train.tar.gz,test.tar.gz"):
        next(only_test.batches("train", 4))


def test_imagefolder_folder_without_test_part_carves_a_fixed_test_split(tmp_path, cache_dir):
    _image_tree(tmp_path / "flat", None, {"cat": 10, "dog": 10}, COLOURS)
    (tmp_path / "flat" / "README.txt").write_text("not an image: skipped")
    Image.new("RGB", (12, 9), (7, 7, 7)).save(tmp_path / "flat" / "cat" / "zz-big.png")  # resized to 6x6
    a = load_dataset("imagefolder", str(tmp_path / "flat"), seed=0)
    b = load_dataset("imagefolder", str(tmp_path / "flat"), seed=5)
    assert len(a.test) == 4 and len(a.train) + len(a.val) == 17 and a.input_shape == (3, 6, 6)
    assert torch.equal(a.test.images, b.test.images)
    assert not (_image_keys(a.test) & (_image_keys(a.train) | _image_keys(a.val)))
    assert any("test split" in note for note in a.notes)


def test_npz_single_file_and_train_arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    labels = np.arange(20) % 4
    np.savez(tmp_path / "one.npz", images=images, labels=labels)
    one = load_dataset("npz", str(tmp_path / "one.npz"), val_fraction=0.25)
    assert len(one.test) == 20 and len(one.train) + len(one.val) == 20
    assert one.num_classes == 4 and one.mean == IMAGENET_MEAN
    assert any("test split AND" in note for note in one.notes)
    np.savez(
        tmp_path / "two.npz", images=images[:5], labels=labels[:5],
        train_images=images[5:].transpose(0, 2, 3, 1), train_labels=labels[5:],  # NHWC is accepted
    )
    two = load_dataset("npz", str(tmp_path / "two.npz"), val_fraction=0.2)
    assert (len(two.train), len(two.val), len(two.test)) == (12, 3, 5) and not two.notes
    assert two.input_shape == (3, 8, 8)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32), labels=labels)
    with pytest.raises(DataError, match="uint8"):
        load_dataset("npz", str(tmp_path / "float.npz"))
    np.savez(tmp_path / "nolabels.npz", images=images)
    with pytest.raises(DataError, match="no array 'labels'"):
        load_dataset("npz", str(tmp_path / "nolabels.npz"))


def test_user_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    for name in KNOWN_DATASETS:
        assert name in str(err.value)
    with pytest.raises(DataError, match="takes no --data"):
        load_dataset("digits", "/tmp")
    with pytest.raises(DataError, match=r"needs --data"):
        load_dataset("npz")
    with pytest.raises(DataError, match=r"path not found: .*missing\.npz"):
        load_dataset("npz", str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        load_dataset("digits", val_fraction=1.0)


def test_exact_cifar_subset_matches_the_official_labels(shared_file):
    path = shared_file("cifar10-test-exact-first1017.npz")
    b = load_dataset("npz", str(path))
    with np.load(path) as z:
        official = z["all_test_labels"][:1017]
    assert b.input_shape == (3, 32, 32) and len(b.test) == 1017
    assert np.array_equal(b.test.labels.numpy(), official)


def test_real_fashion_mnist_where_debian_puts_it():
    if not datasets.FASHION_MNIST_DEFAULT.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    b = load_dataset("fashion-mnist")
    assert (len(b.train) + len(b.val), len(b.test)) == (60_000, 10_000) and b.input_shape == (1, 28, 28)
    assert b.mean == pytest.approx((0.286,), abs=1e-3) and b.std == pytest.approx((0.353,), abs=1e-3)
    assert b.test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official first test labels
