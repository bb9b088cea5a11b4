"""Arguments shared by several verbs, so every verb spells them the same way."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from uniprune.compressors.core.errors import ConfigError
from uniprune.search.api.devices import resolve_device, show_notes
from uniprune.search.api.paths import check_writable

DEFAULT_MODEL = "digits-cnn"

#: moved to the API; kept importable here for the verbs not yet mapped onto specs
__all__ = ["check_writable", "resolve_device", "show_notes"]


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = False, from_checkpoint: bool = False) -> None:
    """``--model`` and ``--checkpoint``. With ``from_checkpoint``, ``--model`` defaults to ``None`` and the
    verb takes the model a uniprune checkpoint names (see :func:`model_name`), else ``digits-cnn``."""
    default = None if required or from_checkpoint else DEFAULT_MODEL
    shown = "the checkpoint's model, else digits-cnn" if from_checkpoint else "digits-cnn"
    parser.add_argument(
        "--model",
        required=required,
        default=default,
        help=f"model name: cifar-resnet20|32|44|56, tv:<torchvision name>, digits-cnn, or package.module:factory (default: {shown})",
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint to load (a state dict, {'state_dict': ...}, or a uniprune checkpoint)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, or a usage error naming what came."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def model_name(given: str | None, checkpoint_meta: dict) -> str:
    """The model to build: ``--model`` when given, else the one a uniprune checkpoint names, else the default."""
    if given:
        return given
    saved = checkpoint_meta.get("model")
    return saved if isinstance(saved, str) and saved else DEFAULT_MODEL


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="digits",
        help="digits (default, embedded), fashion-mnist, cifar10, imagefolder, npz",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="the dataset's folder or file: none for digits; fashion-mnist: the idx folder (default "
        "/usr/share/datasets/fashion-mnist); cifar10: the cifar-10-batches-py folder; imagefolder: a folder "
        "with train/ [val/] test/ class folders, a .tar.gz of one, or several joined by commas "
        "(train.tar.gz,test.tar.gz), decoded once into a cache ($UNIPRUNE_CACHE or ~/.cache/uniprune); "
        "npz: a file with images (uint8 NxCxHxW) and labels",
    )


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (cuda when available)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch; 0 (default) = the cores idle right now (cores minus load average, >= 1), "
        "since threads on busy cores spin and slow small models down many times",
    )


@contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run a block with torch's intra-op thread count set to ``threads`` (``0``: one per idle core, i.e.
    cores minus the load average, at least 1); yields the count and restores the previous one after, so
    a verb called in-process (tests, ``demo``) leaves the caller's setting alone."""
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0 = automatic), got {threads}")
    before = torch.get_num_threads()
    if threads == 0:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0  # no load average on this platform: use every core
        idle = (os.cpu_count() or before) - busy
        threads = max(1, min(before, round(idle)))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
