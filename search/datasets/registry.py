"""The dataset registry: a loader per kind, registered under its names, and :func:`load_dataset`.

A loader is a function ``(path, *, val_fraction, seed, cache_dir) -> DataBundle``; :func:`register` files it
under a name and its aliases. The kinds uniprune ships register themselves in
:mod:`uniprune.search.datasets` (digits, fashion-mnist, cifar10, imagefolder, npz); a user's may be added
the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from uniprune.compressors.core.errors import DataError

from .bundle import DataBundle

Loader = Callable[..., DataBundle]

#: name -> loader, in the order registered (the first name of each kind is its canonical one)
LOADERS: dict[str, Loader] = {}
#: the canonical names, in order
KNOWN_DATASETS: list[str] = []


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register(name: str, *aliases: str) -> Callable[[Loader], Loader]:
    """Decorator: file a loader under ``name`` (shown in :data:`KNOWN_DATASETS`) and ``aliases``."""
    def add(loader: Loader) -> Loader:
        for key in (name, *aliases):
            LOADERS[_key(key)] = loader
        KNOWN_DATASETS.append(name)
        return loader
    return add


def load_dataset(name: str = "digits", path: str | None = None, *, val_fraction: float = 0.1, seed: int = 0,
                 cache_dir: str | None = None) -> DataBundle:
    """Load a registered dataset (see :mod:`uniprune.search.datasets` for the kinds and what ``path`` is).

    Args:
        name: one of :data:`KNOWN_DATASETS` (or an alias).
        path: the dataset's folder or file; not needed for ``digits`` (and ``fashion-mnist`` when
            installed by Debian). For ``imagefolder`` several sources may be joined by commas.
        val_fraction: fraction in [0, 1) of the training data carved out, seeded, as validation
            (ignored when an imagefolder has its own ``val/``).
        seed: seed of the validation carve (the test split never depends on it).
        cache_dir: where decoded imagefolder data is cached (default ``$UNIPRUNE_CACHE`` or ``~/.cache/uniprune``).
    """
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    loader = LOADERS.get(_key(name)) if isinstance(name, str) else None
    if loader is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    return loader(path, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)
