"""Arguments shared by several verbs, so every verb spells them the same way."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from uniprune.compressors.core.errors import ConfigError, NotAvailableError
from uniprune.search.datasets import DataBundle

DEFAULT_MODEL = "digits-cnn"


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


PRECISION_CHOICES = ("auto", "fp32", "bf16")


def add_precision_argument(parser: argparse.ArgumentParser, what: str = "the compressed model runs in") -> None:
    """``--precision {auto,fp32,bf16}``: the precision of the native kernels (auto: bf16 where the CPU has
    avx512_bf16 or AMX, else fp32)."""
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help=f"precision {what}: auto (default: bf16 where the CPU has avx512_bf16 or AMX, else fp32), "
                        "fp32, or bf16 (bf16 weights and activations, float32 accumulation; on AMX tiles where present)")


#: Upper bounds of the numeric options every verb shares (``check_limits``): past them a run cannot finish
#: or cannot be allocated, so it is refused at once with one line instead of hanging or failing later.
MAX_THREADS = 1024
MAX_BATCH = 1 << 20
MAX_COUNT = 10_000_000  # repeats, episodes, epochs, iterations, samples
_COUNT_OPTIONS = ("repeats", "episodes", "warmup", "epochs", "train_epochs", "finetune_epochs", "retrain_epochs",
                  "iterations", "val_samples", "limit", "bn_recalibrate")
_BATCH_OPTIONS = ("batch_size", "eval_batch_size")
_THREAD_OPTIONS = ("threads", "score_threads")


def check_limits(args: argparse.Namespace) -> None:
    """ConfigError of one line for an option past its upper bound: threads above 4x the cores or
    :data:`MAX_THREADS`, a batch size above :data:`MAX_BATCH`, a count (repeats, episodes, epochs, ...) above
    :data:`MAX_COUNT`, a seed outside [0, 2**32 - 1]. Lower bounds are each verb's own."""
    cores = os.cpu_count() or 1
    limit = min(MAX_THREADS, 4 * cores)
    for name in _THREAD_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, int) and value > limit:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is more than this machine can use (at most {limit}: "
                              f"4 x its {cores} cores, and never over {MAX_THREADS})")
    for names, hi, what in ((_BATCH_OPTIONS, MAX_BATCH, "samples per batch"), (_COUNT_OPTIONS, MAX_COUNT, "")):
        for name in names:
            value = getattr(args, name, None)
            if isinstance(value, int) and value > hi:
                raise ConfigError(f"--{name.replace('_', '-')} {value} is too large (at most {hi:,}{' ' + what if what else ''})")
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"--seed must be in [0, {2**32 - 1}], got {seed}")


def check_batch_memory(batch_size: int, floats_per_sample: int, option: str = "--batch-size") -> None:
    """ConfigError of one line when ``batch_size`` samples of ``floats_per_sample`` float32 each (input and a
    few activations of that size) cannot fit in this machine's memory."""
    need = 4 * 4 * batch_size * floats_per_sample  # bytes: the input and about three activations like it
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ConfigError(f"{option} {batch_size} needs about {need / 2**30:,.0f} GiB for {floats_per_sample:,} floats a sample; "
                          f"this machine has {have / 2**30:,.0f} GiB: use a smaller batch")


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


def resolve_device(spec: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (cuda when available) -> a device; CUDA without a GPU is a one-line error."""
    key = (spec or "cpu").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(key)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NotAvailableError(f"--device {spec} asked for CUDA, but no CUDA GPU is available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def show_notes(bundle: DataBundle) -> None:
    """Print a dataset's remarks (e.g. test images doubling as training data) to stderr."""
    for note in bundle.notes:
        print(f"uniprune: note: {note}", file=sys.stderr)


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


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = False) -> None:
    """ConfigError (one line naming ``option``) unless ``path`` can be written, checked before any long work.

    ``folder``: ``path`` is a directory to create or fill; else a file whose parent must be a writable
    directory. A probe file is created and removed; nothing the user had is touched.
    """
    import tempfile
    from pathlib import Path

    p = Path(path).expanduser()
    if folder and p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file; give a folder path")
    if not folder and p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; give a file path inside it")
    target = p if folder else p.parent
    # the nearest existing ancestor decides whether the folders can be made
    probe_dir = target
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"{option} {p}: {probe_dir} is a file, not a folder; choose another path")
    try:
        longest = os.pathconf(probe_dir, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for part in p.parts:
        if len(os.fsencode(part)) > longest:
            raise ConfigError(f"{option}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long, more than the "
                              f"{longest} a file name may have here; choose a shorter name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".uniprune-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {p}: cannot write in {probe_dir} ({exc.strerror or exc}); choose a writable path") from None
    if not folder and p.is_file():
        try:  # an immutable or read-only file cannot be replaced, whatever its folder allows (chattr +i)
            with open(p, "ab"):
                pass
        except OSError as exc:
            raise ConfigError(f"{option} {p} cannot be replaced ({exc.strerror or exc}); choose another path or make it "
                              "writable") from None
