"""Shared fixtures: the development data in ../shared/data (skipped when absent) and a private cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_path(*parts: str) -> Path:
    """A path inside ../shared/data; skips the calling test when it is not there (e.g. a fresh clone on CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"development data not available: {path}")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder (pretrained CIFAR ResNets, the exact CIFAR-10 subset, JPEG tarballs)."""
    return shared_data_path()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private dataset cache for one test, so tests never read or fill the user's ~/.cache/uniprune."""
    path = tmp_path / "cache"
    monkeypatch.setenv("UNIPRUNE_CACHE", str(path))
    return path


@pytest.fixture
def shared_file():
    """``shared_file("pretrained", "x.th")``: a path in ../shared/data, skipping the test when it is absent."""
    return shared_data_path


def _on_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    """Run a test's torch work on one thread: on a shared 2-core machine, spinning threads on busy cores
    make small models many times slower. The previous setting is restored afterwards."""
    yield from _on_one_thread()


@pytest.fixture(scope="module")
def single_thread_module():
    """:func:`single_thread` for a whole module (``pytestmark = pytest.mark.usefixtures(...)``), also
    covering hypothesis tests, which must not use function-scoped fixtures. Episodes are many small ops,
    which extra threads slow down."""
    yield from _on_one_thread()
