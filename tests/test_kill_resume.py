"""Fault injection: a search killed with SIGKILL at random moments, then resumed, loses at most the episode in
progress and never corrupts its run directory; a second search into a folder in use is refused."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

FAST = ["--latency-model", "macs", "--val-samples", "48", "--eval-batch-size", "48", "--seed", "1", "--warmup", "3",
        "--searcher", "ddpg"]  # its episodes play one by one, so a kill can land anywhere among them
TARGET = 12


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "uniprune.search", "search", *FAST, *args]


def _locked_by(run, pid: int) -> bool:
    try:
        return (run / "run.lock").read_text().strip() == str(pid)
    except OSError:
        return False


def _state(run) -> tuple[int, list[str]]:
    done = json.loads((run / "state.json").read_text())["episodes"] if (run / "state.json").is_file() else 0
    rows = list(csv.DictReader((run / "episodes.csv").open())) if (run / "episodes.csv").is_file() else []
    return done, [r["episode"] for r in rows]


@pytest.mark.slow
def test_kill_9_anywhere_then_resume(tmp_path):
    run = tmp_path / "run"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for attempt in range(3):
        proc = subprocess.Popen(_cli("--episodes", str(TARGET), "--run-dir", str(run), *(["--resume"] if attempt else [])),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while not _locked_by(run, proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until this process holds the run (start-up takes seconds on a busy machine)
        time.sleep(rng.uniform(0.0, 2.5))  # then anywhere in its episodes and writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done, rows = _state(run)
        # what the resume point says was played is all on disk; at most one row beyond it
        assert rows[:done] == [str(i) for i in range(done)] and len(rows) <= done + 1
    # the lock died with the process: a resume goes on and reaches the target
    out = subprocess.run(_cli("--run-dir", str(run), "--resume", "--json"), capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    done, rows = _state(run)
    assert done == TARGET and rows == [str(i) for i in range(TARGET)]
    assert json.loads(out.stdout.strip().splitlines()[-1])["episodes"] == TARGET


def test_second_search_into_a_folder_in_use_is_refused(tmp_path):
    from uniprune.compressors.formats.run_dir import RunDir

    config = {"model": "digits-cnn"}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from uniprune.compressors.formats.run_dir import RunDir; "
        f"RunDir.start({str(tmp_path / 'run')!r}, {config!r}); print('ready', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        from uniprune.compressors.core.errors import RunDirError

        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            RunDir.start(tmp_path / "run", config, resume=True)
    finally:
        holder.kill()
        holder.wait()
    RunDir.start(tmp_path / "run", config, resume=True)  # the holder is gone, and so is its lock


def test_truncated_episode_log_is_an_error_not_a_silent_loss(tmp_path):
    from uniprune.compressors.core.errors import RunDirError
    from uniprune.compressors.formats.run_dir import RunDir

    run = RunDir.start(tmp_path / "run", {"model": "digits-cnn"})
    for i in range(3):
        run.record_episode({"episode": i, "reward": 0.5})
        run.save_state(episodes=i + 1)
    lines = (tmp_path / "run" / "episodes.csv").read_text().splitlines()
    (tmp_path / "run" / "episodes.csv").write_text("\n".join(lines[:2]) + "\n")  # header + one row
    with pytest.raises(RunDirError, match="holds 1 episode rows but state.json records 3"):
        RunDir.start(tmp_path / "run", {"model": "digits-cnn"}, resume=True)


def _finetune(run, *extra: str) -> list[str]:
    # 18 epochs: three kills, each up to a second after an epoch was kept, must land before the run ends; on a Zen 5
    # core an epoch of this run takes about 0.35 s, and with 9 epochs the third process could finish first
    return [sys.executable, "-m", "uniprune.search", "finetune", "--run-dir", str(run), "--method", "admm", "--epochs", "12",
            "--iterations", "3", "--retrain-epochs", "6", "--limit", "1536", "--batch-size", "32", "--no-latency", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [[], ["--time-budget", "0.6", "--limit", "256"]], ids=["epochs", "time-budget"])
def test_kill_9_in_a_finetune_then_resume(tmp_path, budget):
    """Killed anywhere, a fine-tune resumed with --resume loses at most the epoch in progress and ends with the
    same files an uninterrupted one writes; under a time budget it keeps its plan and the time it had spent."""
    from uniprune.compressors.formats.checkpoint import load_compressed
    from uniprune.search.cli import main

    run = tmp_path / "run"
    assert main(["search", *FAST, "--episodes", "2", "--warmup", "1", "--run-dir", str(run)]) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    partial = run / "compressed.pt.partial"
    rng = random.Random(3)
    seen, planned, spent = [], [], []
    for _ in range(3):
        proc = subprocess.Popen(_finetune(run, *budget, *(["--resume"] if partial.is_file() else [])),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        before = partial.stat().st_mtime_ns if partial.is_file() else 0
        while proc.poll() is None and time.monotonic() < deadline and (
                not partial.is_file() or partial.stat().st_mtime_ns == before):
            time.sleep(0.05)  # until this process has finished an epoch of its own
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if partial.is_file():
            import torch

            state = torch.load(partial, weights_only=True)
            seen.append((state["phase"], int(state["done"])))
            planned.append(int(state["budget"]["epochs"]) if budget else 12)
            spent.append(float(state["budget"]["spent"]) if budget else 0.0)
    # each kill came after an epoch was kept, and the state only moves forward
    assert len(seen) == 3 and seen == sorted(seen, key=lambda s: (s[0] == "retrain", s[1]))
    # a budgeted run is planned once: every process goes on with that plan, and the time spent only grows
    assert len(set(planned)) == 1 and spent == sorted(spent)
    out = subprocess.run(_finetune(run, *budget, "--resume", "--json"), capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["epochs"] == planned[0] and not partial.exists()
    if budget:
        # the budget holds; an epoch short of the plan is one the deadline refused (the restarts spent its time: on a
        # fast core this tiny run plans hundreds of epochs), never one a kill lost (the epochs case checks that)
        held = result["time_budget"]
        assert held["met"] and (result["epochs_run"] >= planned[0] - 1 or held["stopped_early"])
    name, _, structures, _ = load_compressed(run / "compressed.pt")
    assert name == "digits-cnn" and structures
    # resuming a finished run, or with other options, is refused in one line
    again = subprocess.run(_finetune(run, *budget, "--resume", "--force"), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "nothing to resume" in again.stderr
