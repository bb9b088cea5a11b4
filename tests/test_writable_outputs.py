"""Outputs that cannot be written are refused in one line before any long work starts, and nothing is touched."""

from __future__ import annotations

import pytest
from uniprune.search.cli import main


@pytest.fixture()
def blocker(tmp_path):
    """A file standing where a folder is expected."""
    path = tmp_path / "a-file"
    path.write_text("keep me")
    return path


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "1", "--out", "{b}/sub/model.pt"],
    ["search", "--latency-model", "macs", "--episodes", "1", "--run-dir", "{b}"],
    ["search", "--latency-model", "macs", "--episodes", "1", "--run-dir", "{b}/run"],
    ["demo", "--out", "{b}"],
    ["demo", "--out", "{b}/demo"],
    ["replay", "--policy", "{t}/p.json", "--out", "{b}/p.json"],
])
def test_file_in_the_way_is_one_line(argv, blocker, tmp_path, capsys):
    (tmp_path / "p.json").write_text("{}")
    args = [a.format(b=blocker, t=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and str(blocker) in err[0], err
    assert blocker.read_text() == "keep me"


def test_unwritable_folder_is_one_line(capsys):
    # /proc takes no new files, whoever runs the tests (chmod means nothing to root, which CI is)
    assert main(["train", "--epochs", "1", "--out", "/proc/uniprune-test/m.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "--out" in err[0]
