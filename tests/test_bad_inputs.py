"""Bad input, verb by verb and file by file: each case is a command line, and it must end with exit status 2
and one line on stderr that starts ``uniprune <verb>: error:`` and names what was wrong; never a traceback,
never a changed file the user had.

The files are made once per module: a good digits checkpoint, a compressed checkpoint, a policy, a search
run directory with its agent; and broken variants of each (missing, empty, cut short, another format,
pickled code, NaN, fields out of range, written for another model).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import project_model
from uniprune.compressors.formats.checkpoint import save_compressed
from uniprune.compressors.native import uniprune_lean
from uniprune.search.cli import main
from uniprune.search.models import build_model, save_checkpoint

FAST_ENV = ["--latency-model", "macs", "--val-samples", "32", "--eval-batch-size", "32"]


class _Payload:
    def __reduce__(self):
        return (print, ("uniprune-bad-input-payload-ran",))


def _deep(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = build_model("digits-cnn", num_classes=10, input_shape=(3, 32, 32))
    f: dict[str, Path] = {"dir": d}
    f["dense"] = save_checkpoint(d / "dense.pt", model, model_name="digits-cnn", dataset="digits", input_shape=(3, 32, 32),
                                 num_classes=10)
    good = f["dense"].read_bytes()
    f["empty"] = _write(d / "empty.pt", b"")
    f["cut"] = _write(d / "cut.pt", good[: len(good) // 3])
    f["text"] = _write(d / "text.pt", "hello, not a checkpoint\n")
    f["pickle"] = _write(d / "pickle.pt", pickle.dumps({"state_dict": _Payload()}))
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "opt": torch.optim.SGD}, buf)
    f["code"] = _write(d / "code.pt", buf.getvalue())
    torch.save([1, 2, 3], buf := io.BytesIO())
    f["list"] = _write(d / "list.pt", buf.getvalue())
    nan = {k: v.clone() for k, v in model.state_dict().items()}
    nan["conv1.weight"][0] = float("nan")
    torch.save(nan, buf := io.BytesIO())
    f["nan"] = _write(d / "nan.pt", buf.getvalue())
    torch.save(build_model("cifar-resnet20").state_dict(), buf := io.BytesIO())
    f["resnet"] = _write(d / "resnet.pt", buf.getvalue())

    policy = Policy(layers={s.name: LayerAction(0.5, 0.25) for s in compressible_layers(model)}, model="digits-cnn")
    f["policy"] = policy.save(d / "policy.json")
    raw = json.loads(f["policy"].read_text())
    f["policy_text"] = _write(d / "p-text.json", "{not json")
    f["policy_list"] = _write(d / "p-list.json", "[1, 2]")
    f["policy_format"] = _write(d / "p-format.json", json.dumps(raw | {"format": "other/9"}))
    f["policy_prune"] = _write(d / "p-prune.json", json.dumps(raw | {"layers": {"conv2": {"prune": 1.5, "unify": 0}}}))
    f["policy_neg"] = _write(d / "p-neg.json", json.dumps(raw | {"layers": {"conv2": {"prune": -0.2, "unify": 0}}}))
    f["policy_sum"] = _write(d / "p-sum.json", json.dumps(raw | {"layers": {"conv2": {"prune": 0.7, "unify": 0.6}}}))
    f["policy_str"] = _write(d / "p-str.json", json.dumps(raw | {"layers": {"conv2": {"prune": "half", "unify": 0}}}))
    f["policy_layer"] = _write(d / "p-layer.json", json.dumps(raw | {"layers": {"layer9.conv": {"prune": 0.5, "unify": 0}}}))
    f["policy_model"] = _write(d / "p-model.json", json.dumps(raw | {"model": "cifar-resnet56"}))
    f["policy_block"] = _write(d / "p-block.json", json.dumps(raw | {"block_shape": {"conv": [0, 4]}}))
    f["policy_budget"] = _write(d / "p-budget.json", json.dumps(raw | {"latency_budget": 7}))
    # strict JSON (issue 21): a repeated key (the first, invalid value would lose), deep nesting, numbers past range
    text = json.dumps(raw)
    f["policy_dupkey"] = _write(d / "p-dupkey.json", text.replace('"layers":', '"layers": {"conv2": {"prune": 1.5}}, "layers":', 1))
    f["policy_deep"] = _write(d / "p-deep.json", "[" * 100000 + "]" * 100000)
    f["policy_deep_field"] = _write(d / "p-deep-field.json", json.dumps(raw | {"search": _deep(70)}))
    f["policy_huge"] = _write(d / "p-huge.json", text.replace('"prune": 0.5', '"prune": 1' + "0" * 400, 1))
    f["policy_nan"] = _write(d / "p-nan.json", text.replace('"prune": 0.5', '"prune": NaN', 1))
    f["policy_inf"] = _write(d / "p-inf.json", text.replace('"unify": 0.25', '"unify": -Infinity', 1))

    structures = project_model(model, policy)
    f["compressed"] = save_compressed(d / "compressed.pt", model, structures, model_name="digits-cnn", num_classes=10,
                                      input_shape=(3, 32, 32))
    data = torch.load(f["compressed"], weights_only=True)
    torch.save(data | {"format": "something/1"}, buf := io.BytesIO())
    f["c_format"] = _write(d / "c-format.pt", buf.getvalue())
    torch.save(data | {"structures": {"conv2": {"weight_shape": [1]}}}, buf := io.BytesIO())
    f["c_struct"] = _write(d / "c-struct.pt", buf.getvalue())
    torch.save(data | {"model_name": 7}, buf := io.BytesIO())
    f["c_name"] = _write(d / "c-name.pt", buf.getvalue())
    bad_state = dict(data["state_dict"])
    bad_state["conv2.weight"] = bad_state["conv2.weight"].clone().fill_(float("inf"))
    torch.save(data | {"state_dict": bad_state}, buf := io.BytesIO())
    f["c_inf"] = _write(d / "c-inf.pt", buf.getvalue())

    # datasets
    f["npz_keys"] = d / "keys.npz"
    np.savez(f["npz_keys"], x=np.zeros((4, 1, 8, 8), np.uint8))
    f["npz_labels"] = d / "labels.npz"  # a 10-class checkpoint on data with a label 99
    np.savez(f["npz_labels"], images=np.zeros((40, 3, 32, 32), np.uint8), labels=np.array([0, 1, 2, 99] * 10))
    f["npz_dtype"] = d / "dtype.npz"
    np.savez(f["npz_dtype"], images=np.zeros((4, 1, 8, 8), np.float64), labels=np.zeros(4, np.int64))
    f["npz_object"] = d / "object.npz"
    np.savez(f["npz_object"], images=np.array([_Payload()], dtype=object), labels=np.zeros(1))
    f["npz_text"] = _write(d / "text.npz", "not an npz")
    f["tar_cut"] = _write(d / "cut.tar.gz", b"\x1f\x8b\x08\x00garbage")
    f["folder_empty"] = d / "emptyfolder"
    f["folder_empty"].mkdir()
    tar_path = d / "flat.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo("README")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    f["tar_flat"] = tar_path
    with tarfile.open(d / "empty.tar.gz", "w:gz"):
        pass
    f["tar_empty"] = d / "empty.tar.gz"
    f["tar_zero"] = _write(d / "zero.tar.gz", b"")
    f["zip"] = d / "agent.zip"
    with zipfile.ZipFile(f["zip"], "w") as z:
        z.writestr("data", pickle.dumps(_Payload()))

    # a run directory with an agent, and broken copies of it
    run = d / "run"
    assert main(["search", *FAST_ENV, "--checkpoint", str(f["dense"]), "--searcher", "ddpg", "--episodes", "2", "--warmup", "1",
                 "--run-dir", str(run)]) == 0
    f["run"] = run
    for name, damage in {
        "run_config": ("config.json", "{oops"),
        "run_state": ("state.json", "[]"),
        "run_agent_json": ("agent.json", "{}"),
        "run_agent_pt": ("agent.pt", pickle.dumps(_Payload())),
        "run_csv": ("episodes.csv", "episode,reward\n"),
    }.items():
        copy = d / name
        copy.mkdir()
        for item in run.iterdir():
            if item.is_file() and item.name != "run.lock":
                (copy / item.name).write_bytes(item.read_bytes())
        _write(copy / damage[0], damage[1])
        f[name] = copy
    f["not_run"] = d / "not-a-run"
    f["not_run"].mkdir()
    (f["not_run"] / "thesis.txt").write_text("precious")
    return f


def _cases() -> list[tuple[str, list[str], str]]:
    """(id, argv with {placeholders}, a fragment the one error line must hold)."""
    c: list[tuple[str, list[str], str]] = []
    ck = ["missing", "empty", "cut", "text", "pickle", "code", "list", "nan", "resnet"]
    ck_msg = {"missing": "does not exist", "empty": "is empty", "cut": "cut short", "text": "not a file written by torch.save",
              "pickle": "torch.save", "code": "pickled", "list": "holds a list", "nan": "NaN or inf",
              "resnet": "does not fit the model"}
    for kind in ck:
        path = "{dir}/nope.pt" if kind == "missing" else f"{{{kind}}}"
        c.append((f"eval-checkpoint-{kind}", ["eval", "--checkpoint", path], ck_msg[kind]))
        c.append((f"train-checkpoint-{kind}", ["train", "--epochs", "1", "--checkpoint", path, "--out", "{dir}/o-{n}.pt"],
                  ck_msg[kind]))
        c.append((f"search-checkpoint-{kind}", ["search", *FAST_ENV, "--checkpoint", path, "--episodes", "1",
                                                "--run-dir", "{dir}/r-{n}"], ck_msg[kind]))
        c.append((f"finetune-checkpoint-{kind}", ["finetune", "--policy", "{policy}", "--model", "digits-cnn",
                                                  "--checkpoint", path, "--out", "{dir}/f-{n}.pt", "--no-latency"], ck_msg[kind]))
        c.append((f"bench-policy-checkpoint-{kind}", ["bench", "--model", "digits-cnn", "--checkpoint", path, "--policy",
                                                      "{policy}", "--no-table"], ck_msg[kind]))
        c.append((f"replay-checkpoint-{kind}", ["replay", "--policy", "{policy}", *FAST_ENV, "--checkpoint", path,
                                                "--out", "{dir}/rp-{n}.json"], ck_msg[kind]))
    comp = {"missing": "does not exist", "empty": "is empty", "cut": "cut short", "text": "not a file written by torch.save",
            "dense": "not a uniprune compressed checkpoint", "c_format": "not a uniprune compressed checkpoint",
            "c_struct": "malformed", "c_name": "model_name", "c_inf": "NaN or inf", "code": "pickled"}
    for kind, msg in comp.items():
        path = "{dir}/nope.pt" if kind == "missing" else f"{{{kind}}}"
        c.append((f"bench-compressed-{kind}", ["bench", "--compressed", path, "--no-table"], msg))
        if kind not in ("dense", "c_format"):  # eval takes a plain checkpoint (a state dict) too
            c.append((f"eval-compressed-{kind}", ["eval", "--checkpoint", path], msg))
    pol = {"policy_dupkey": "appears twice", "policy_deep": "nested", "policy_deep_field": "nested",
           "policy_huge": "finite", "policy_nan": "NaN", "policy_inf": "Infinity",
           "policy_text": "not valid JSON", "policy_list": "object", "policy_format": "format", "policy_prune": "prune",
           "policy_neg": "prune", "policy_sum": "prune + unify", "policy_str": "prune", "policy_layer": "layer9.conv",
           "policy_model": "cifar-resnet56", "policy_block": "block", "policy_budget": "latency_budget"}
    for kind, msg in pol.items():
        c.append((f"finetune-{kind}", ["finetune", "--policy", f"{{{kind}}}", "--model", "digits-cnn", "--checkpoint",
                                       "{dense}", "--out", "{dir}/f-{n}.pt", "--no-latency"], msg))
        c.append((f"bench-{kind}", ["bench", "--model", "digits-cnn", "--policy", f"{{{kind}}}", "--no-table"], msg))
        c.append((f"replay-{kind}", ["replay", "--policy", f"{{{kind}}}", *FAST_ENV, "--checkpoint", "{dense}",
                                     "--out", "{dir}/rp-{n}.json"], msg))
    c += [
        ("finetune-policy-missing", ["finetune", "--policy", "{dir}/nope.json", "--out", "{dir}/f.pt"], "does not exist"),
        ("bench-policy-missing", ["bench", "--policy", "{dir}/nope.json"], "does not exist"),
        ("replay-policy-missing", ["replay", "--policy", "{dir}/nope.json", "--out", "{dir}/x.json"], "does not exist"),
    ]
    # agents and run directories
    for kind, msg in {"run_agent_json": "agent", "run_agent_pt": "agent.pt", "zip": "pickled code",
                      "not_run": "agent.json", "missing": "does not exist"}.items():
        where = "{dir}/no-run" if kind == "missing" else f"{{{kind}}}"
        c.append((f"replay-agent-{kind}", ["replay", "--agent", where, *FAST_ENV, "--checkpoint", "{dense}",
                                           "--out", "{dir}/ra-{n}.json"], msg))
    for kind, msg in {"run_config": "config.json", "run_state": "state.json", "run_csv": "episodes.csv",
                      "run_agent_pt": "agent.pt", "run_agent_json": "agent", "not_run": "no config.json",
                      "dense": "is a file"}.items():
        c.append((f"search-resume-{kind}", ["search", "--run-dir", f"{{{kind}}}", "--resume", "--episodes", "4"], msg))
    c += [
        ("search-occupied", ["search", *FAST_ENV, "--run-dir", "{run}", "--episodes", "1"], "already holds a run"),
        ("search-force-foreign", ["search", *FAST_ENV, "--run-dir", "{not_run}", "--force", "--episodes", "1"],
         "not a uniprune run directory"),
        ("search-resume-nothing", ["search", "--run-dir", "{dir}/fresh-run", "--resume"], "nothing to resume"),
        ("search-resume-other-budget", ["search", *FAST_ENV, "--run-dir", "{run}", "--resume", "--latency-budget", "0.3"],
         "--latency-budget"),
        ("finetune-run-dir-missing", ["finetune", "--run-dir", "{dir}/no-run"], "does not exist"),
        ("finetune-run-dir-file", ["finetune", "--run-dir", "{dense}"], "is a file"),
        ("finetune-run-exists", ["finetune", "--run-dir", "{run}", "--out", "{dense}", "--no-latency"], "--force"),
        ("report-run-missing", ["report", "--run-dir", "{dir}/no-run"], "does not exist"),
        ("report-run-file", ["report", "--run-dir", "{dense}"], "is a file"),
        ("report-run-empty", ["report", "--run-dir", "{folder_empty}"], "policy.json"),
    ]
    # datasets
    data = {"npz_keys": "images", "npz_labels": "classes", "npz_dtype": "uint8", "npz_object": "npz", "npz_text": "npz",
            "missing": "not found"}
    for kind, msg in data.items():
        path = "{dir}/nope.npz" if kind == "missing" else f"{{{kind}}}"
        c.append((f"eval-npz-{kind}", ["eval", "--checkpoint", "{dense}", "--dataset", "npz", "--data", path], msg))
        c.append((f"search-npz-{kind}", ["search", *FAST_ENV, "--checkpoint", "{dense}", "--dataset", "npz", "--data", path,
                                         "--run-dir", "{dir}/s-{n}"], msg))
        if kind != "npz_labels":  # training from scratch on 100 classes is not wrong
            c.append((f"train-npz-{kind}", ["train", "--epochs", "1", "--dataset", "npz", "--data", path, "--out",
                                            "{dir}/t-{n}.pt"], msg))
    for name in ("cut", "flat", "empty", "zero"):  # archives: cut short, without class folders, empty, zero bytes
        data = ["--dataset", "imagefolder", "--data", f"{{tar_{name}}}"]
        c.append((f"train-imagefolder-tar-{name}", ["train", *data, "--out", "{dir}/t.pt"], f"{name}.tar.gz"))
        if name in ("empty", "zero"):
            c.append((f"eval-imagefolder-tar-{name}", ["eval", "--checkpoint", "{dense}", *data], f"{name}.tar.gz"))
            c.append((f"search-imagefolder-tar-{name}", ["search", *FAST_ENV, "--checkpoint", "{dense}", *data,
                                                         "--run-dir", "{dir}/s-{n}"], f"{name}.tar.gz"))
    c += [
        ("train-dataset-unknown", ["train", "--dataset", "mnist-c", "--out", "{dir}/t.pt"], "mnist-c"),
        ("train-imagefolder-empty", ["train", "--dataset", "imagefolder", "--data", "{folder_empty}", "--out", "{dir}/t.pt"],
         "emptyfolder"),
        ("train-cifar10-missing", ["train", "--dataset", "cifar10", "--data", "{dir}/no-cifar", "--out", "{dir}/t.pt"],
         "no-cifar"),
        ("train-cifar10-no-path", ["train", "--dataset", "cifar10", "--out", "{dir}/t.pt"], "--data"),
        ("eval-npz-no-path", ["eval", "--checkpoint", "{dense}", "--dataset", "npz"], "--data"),
    ]
    # models
    for verb, extra in (("train", ["--out", "{dir}/t-{n}.pt"]), ("search", [*FAST_ENV, "--run-dir", "{dir}/m-{n}"]),
                        ("bench", ["--policy", "{policy}", "--no-table"]), ("eval", ["--checkpoint", "{dense}"])):
        for model, msg in (("resnet-999", "resnet-999"), ("tv:no_such_net", "no_such_net"),
                           ("nosuchpkg.mod:factory", "nosuchpkg"), ("os:getcwd", "os:getcwd")):
            c.append((f"{verb}-model-{model}", [verb, "--model", model, *extra], msg))
    # numbers out of range
    ranges = [
        ("train", ["--epochs", "0"], "--epochs"), ("train", ["--epochs", "-2"], "--epochs"),
        ("train", ["--lr", "0"], "lr"), ("train", ["--lr", "nan"], "lr"), ("train", ["--batch-size", "0"], "--batch-size"),
        ("train", ["--val-fraction", "1.5"], "fraction"),
        ("search", ["--latency-budget", "0"], "--latency-budget"), ("search", ["--latency-budget", "1.5"], "--latency-budget"),
        ("search", ["--latency-budget", "-1"], "--latency-budget"), ("search", ["--latency-budget", "nan"], "--latency-budget"),
        ("search", ["--episodes", "0"], "--episodes"), ("search", ["--warmup", "-1"], "--warmup"),
        ("search", ["--val-samples", "0"], "--val-samples"), ("search", ["--val-fraction", "0"], "--val-fraction"),
        ("search", ["--max-prune", "1.2"], "--max-prune"), ("search", ["--max-unify", "-0.1"], "--max-unify"),
        ("search", ["--threads", "0"], "--threads"), ("search", ["--batch-size", "0"], "--batch-size"),
        ("search", ["--reward", "size"], "--size-budget"), ("search", ["--size-budget", "2", "--reward", "size"], "--size-budget"),
        ("search", ["--keep-dense", "conv9"], "conv9"), ("search", ["--keep-dense", "conv1,conv2,conv3,conv4,fc"], "--keep-dense"),
        ("search", ["--bn-recalibrate", "-1"], "--bn-recalibrate"),
        ("search", ["--latency-budget", "0.01"], "cannot be met"),
        ("finetune", ["--epochs", "0"], "--epochs"), ("finetune", ["--lr", "-1"], "lr"), ("finetune", ["--rho", "0"], "rho"),
        ("finetune", ["--batch-size", "0"], "--batch-size"), ("finetune", ["--iterations", "5", "--epochs", "4"], "iterations"),
        ("demo", ["--warmup", "-3"], "--warmup"), ("demo", ["--episodes", "0"], "--episodes"),
        ("demo", ["--latency-budget", "2"], "--latency-budget"), ("demo", ["--finetune-epochs", "1"], "--finetune-epochs"),
        ("demo", ["--threads", "0"], "--threads"),
        ("bench", ["--threads", "0"], "positive"), ("bench", ["--batch-size", "-1"], "positive"),
        ("bench", ["--input-shape", "3,x,2"], "C,H,W"), ("bench", ["--engines", "tensorrt"], "engines"),
        ("bench", ["--repeats", "0"], "positive"),
        ("replay", ["--latency-budget", "3"], "--latency-budget"),
        # upper bounds (issue 21): what cannot finish or cannot be allocated is refused at once
        ("bench", ["--threads", "10000"], "--threads"), ("bench", ["--threads", str(4 * (os.cpu_count() or 1) + 1)], "--threads"),
        ("search", ["--threads", "100000"], "--threads"), ("search", ["--score-threads", "5000"], "--score-threads"),
        ("demo", ["--threads", "2000"], "--threads"), ("export", ["--threads", "5000"], "--threads"),
        ("train", ["--batch-size", "1000000000"], "--batch-size"), ("finetune", ["--batch-size", "1000000000"], "--batch-size"),
        ("search", ["--batch-size", "1000000000"], "--batch-size"), ("search", ["--eval-batch-size", "1000000000"], "--eval-batch-size"),
        ("bench", ["--batch-size", "1000000000"], "--batch-size"), ("export", ["--batch-size", "1000000000"], "--batch-size"),
        ("eval", ["--batch-size", "1000000000"], "--batch-size"), ("bench", ["--input-shape", "3,200000,200000"], "GiB"),
        ("bench", ["--batch-size", "1000000", "--input-shape", "3,1000,1000"], "GiB"),
        ("bench", ["--repeats", "1000000000000"], "--repeats"),
        ("search", ["--episodes", "1000000000000000000000"], "--episodes"), ("search", ["--episodes", "1e21"], "1e21"),
        ("search", ["--warmup", "99999999999"], "--warmup"), ("demo", ["--episodes", "100000000"], "--episodes"),
        ("train", ["--epochs", "1000000000"], "--epochs"), ("finetune", ["--epochs", "1000000000"], "--epochs"),
        ("finetune", ["--iterations", "10000000000", "--epochs", "100"], "--iterations"),
        ("search", ["--val-samples", "1000000000000"], "--val-samples"),
        ("train", ["--seed", "-1"], "--seed"), ("train", ["--seed", "4294967296"], "--seed"), ("search", ["--seed", "-5"], "--seed"),
        ("finetune", ["--seed", "99999999999999"], "--seed"), ("demo", ["--seed", "-1"], "--seed"),
        ("replay", ["--seed", "-2"], "--seed"),
    ]
    for verb, extra, msg in ranges:
        base = {"train": ["train", "--out", "{dir}/t-{n}.pt"],
                "search": ["search", *FAST_ENV, "--checkpoint", "{dense}", "--run-dir", "{dir}/s-{n}"],
                "finetune": ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--checkpoint", "{dense}",
                             "--out", "{dir}/f-{n}.pt", "--no-latency"],
                "demo": ["demo", "--out", "{dir}/d-{n}"],
                "bench": ["bench", "--model", "digits-cnn", "--policy", "{policy}", "--no-table"],
                "replay": ["replay", "--policy", "{policy}", *FAST_ENV, "--checkpoint", "{dense}", "--out", "{dir}/rp-{n}.json"],
                "export": ["export", "--compressed", "{compressed}", "--out", "{dir}/e-{n}"],
                "eval": ["eval", "--checkpoint", "{dense}"],
                }[verb]
        c.append((f"{verb}-{'-'.join(extra)}", [*base, *extra], msg))
    # outputs
    c += [
        ("train-out-exists", ["train", "--epochs", "1", "--out", "{dense}"], "--force"),
        ("train-out-folder", ["train", "--epochs", "1", "--out", "{dir}"], "folder"),
        ("train-out-under-file", ["train", "--epochs", "1", "--out", "{dense}/x.pt"], "is a file"),
        ("replay-out-exists", ["replay", "--policy", "{policy}", "--out", "{dense}"], "--force"),
        ("replay-out-folder", ["replay", "--policy", "{policy}", "--out", "{dir}"], "folder"),
        ("demo-out-occupied", ["demo", "--out", "{not_run}"], "not an empty folder"),
        ("demo-out-file", ["demo", "--out", "{dense}"], "not an empty folder"),
        ("finetune-out-folder", ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--out", "{dir}"], "folder"),
        ("finetune-out-exists", ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--out", "{dense}"], "--force"),
        ("finetune-no-policy", ["finetune", "--out", "{dir}/f.pt"], "--policy"),
        ("search-run-dir-file", ["search", *FAST_ENV, "--run-dir", "{dense}"], "is a file"),
        ("bench-cache-dir-file", ["bench", "--model", "digits-cnn", "--policy", "{policy}", "--cache-dir", "{dense}"],
         "is a file"),
        ("search-run-dir-under-file", ["search", *FAST_ENV, "--run-dir", "{dense}/run"], "is a file"),
        # the file system refuses (issue 21): one line, before any long work
        ("export-out-proc", ["export", "--compressed", "{compressed}", "--out", "/proc/uniprune-art"], "/proc"),
        ("export-out-name-too-long", ["export", "--compressed", "{compressed}", "--out", "{dir}/" + "a" * 300], "name"),
        ("export-out-parent-missing", ["export", "--compressed", "{compressed}", "--out", "{dir}/no/such/art"], "no/such"),
        ("export-out-is-file", ["export", "--compressed", "{compressed}", "--out", "{dense}"], "--out"),
        ("train-out-proc", ["train", "--epochs", "1", "--out", "/proc/uniprune.pt"], "/proc"),
        ("train-out-name-too-long", ["train", "--epochs", "1", "--out", "{dir}/" + "a" * 300 + ".pt"], "long"),
        ("replay-out-proc", ["replay", "--policy", "{policy}", "--out", "/proc/uniprune.json"], "/proc"),
        ("finetune-out-proc", ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--out", "/proc/f.pt"], "/proc"),
        ("demo-out-proc", ["demo", "--out", "/proc/uniprune-demo"], "/proc"),
        ("search-run-dir-proc", ["search", *FAST_ENV, "--run-dir", "/proc/uniprune-run"], "/proc"),
    ]
    # usage errors argparse reports (one line too)
    c += [
        ("no-verb", [], "VERB"),
        ("unknown-verb", ["compress"], "compress"),
        ("train-unknown-option", ["train", "--epohcs", "3"], "--epohcs"),
        ("search-searcher-unknown", ["search", "--searcher", "genetic"], "genetic"),
        ("finetune-method-unknown", ["finetune", "--method", "lottery"], "lottery"),
        ("bench-no-source", ["bench"], "--policy"),
        ("replay-no-source", ["replay", "--out", "x.json"], "--agent"),
        ("replay-no-out", ["replay", "--policy", "p.json"], "--out"),
        ("train-epochs-text", ["train", "--epochs", "many"], "many"),
        ("search-budget-text", ["search", "--latency-budget", "half"], "half"),
    ]
    return c


CASES = _cases()


def test_the_suite_is_big_enough():
    assert len(CASES) >= 150 and len({case_id for case_id, _, _ in CASES}) == len(CASES)
    # issue 21: at least 400 in all, with the edited artifacts and the held or immutable outputs
    total = len(CASES) + len(ARTIFACT_CASES) + len(HELD_CASES)
    assert total >= 400, total
    assert len({(c[0], c[1]) for c in ARTIFACT_CASES}) == len(ARTIFACT_CASES)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.lock"}


@pytest.mark.parametrize(("case_id", "argv", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, fragment, files, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    before = _snapshot(files["dir"])
    n = hashlib.sha1(case_id.encode()).hexdigest()[:8]
    args = [a.format(n=n, **{k: str(v) for k, v in files.items()}) for a in argv]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    assert "uniprune-bad-input-payload-ran" not in captured.out + captured.err  # no code ran from any file
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert code == 2, (code, captured.err[-600:])
    assert len(errors) == 1, captured.err[-600:]
    assert fragment.lower() in errors[0].lower(), errors[0]
    # nothing the user had was changed (new files from a refused run are not allowed either)
    after = _snapshot(files["dir"])
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k not in before and not k.startswith(("r-", "s-", "m-"))], sorted(set(after) - set(before))


def test_a_depthwise_conv_in_a_policy_is_named_as_such():
    from uniprune.compressors.core.errors import PolicyError

    model = build_model("tv:mobilenet_v2", num_classes=10, input_shape=(3, 32, 32))
    policy = Policy(layers={"features.1.conv.0.0": LayerAction(prune=0.5, unify=0.0)})
    with pytest.raises(PolicyError, match="depthwise convs are not compressible") as info:
        project_model(model, policy)
    assert "another model" not in str(info.value) and "features.1.conv.0.0" in str(info.value)


def test_the_model_check_turns_any_exception_into_one_line():
    """torchvision's ViT asserts its image size: an AssertionError, not a RuntimeError."""
    from uniprune.compressors.core.errors import ModelError

    with pytest.raises(ModelError, match="AssertionError") as info:
        build_model("tv:vit_b_16", num_classes=10, input_shape=(3, 64, 64))
    assert "\n" not in str(info.value) and "(3, 64, 64)" in str(info.value)


# ------------------------------------------------------------------------------------------------------------
# Issue 21: an exported artifact is data (an edited plan.json or weights.bin is refused in one line, by bench and
# by the artifact's own loader, before any native call), every option has an upper bound, JSON is strict, a
# second writer of an --out or a run directory is refused, and a file system that refuses a write is one line.
# The artifact (digits CNN, 3x32x32: four convs, a global pool, a linear) is exported once per module; each
# case edits a fresh copy, which must be unchanged afterwards.

def _set(path: tuple, value: Any) -> Callable[[dict, bytearray], None]:
    def edit(h: dict, blob: bytearray) -> None:
        target = h
        for key in path[:-1]:
            target = target[key]
        if value is _DEL:
            del target[path[-1]]
        else:
            target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return edit


_DEL = object()


def _blob_int32(array: str, index: int, value: int) -> Callable[[dict, bytearray], None]:
    def edit(h: dict, blob: bytearray) -> None:
        rec = h["arrays"][array]
        struct.pack_into("<i", blob, rec["offset"] + 4 * (index if index >= 0 else math.prod(rec["shape"]) + index), value)
    return edit


def _blob_float(array: str, index: int, value: float) -> Callable[[dict, bytearray], None]:
    def edit(h: dict, blob: bytearray) -> None:
        struct.pack_into("<f", blob, h["arrays"][array]["offset"] + 4 * index, value)
    return edit


def _blob_replace(make: Callable[[bytearray], bytes]) -> Callable[[dict, bytearray], None]:
    def edit(h: dict, blob: bytearray) -> None:
        blob[:] = make(blob)
    return edit


def _plan_edits() -> list[tuple[str, Callable[[dict, bytearray], None] | str, bool, str]]:
    """(id, edit of (header, weights) or a replacement text for plan.json, whether the sha256 is updated to match,
    a fragment the error line must hold)."""
    e: list[tuple[str, Any, bool, str]] = []
    # buffers: shrunk, inflated, wrong types
    for b in (2, 3):
        e += [(f"buffer{b}-halved", _set(("buffers", b), lambda v: v // 2), True, f"buffer {b}"),
              (f"buffer{b}-2e62", _set(("buffers", b), 2**62), True, "buffers"),
              (f"buffer{b}-doubled", _set(("buffers", b), lambda v: 2 * v), True, f"buffers'[{b}]"),
              (f"buffer{b}-negative", _set(("buffers", b), -1), True, "buffers"),
              (f"buffer{b}-float", _set(("buffers", b), lambda v: v + 0.5), True, "buffers"),
              (f"buffer{b}-string", _set(("buffers", b), "8192"), True, "buffers"),
              (f"buffer{b}-null", _set(("buffers", b), None), True, "buffers"),
              (f"buffer{b}-huge-int", _set(("buffers", b), 10**400), True, "buffers")]
    e += [("buffers-empty", _set(("buffers",), []), True, "buffers"), ("buffers-one", _set(("buffers",), [0]), True, "buffers"),
          ("buffers-missing", _set(("buffers",), _DEL), True, "buffers"),
          ("buffers-dropped-last", _set(("buffers",), lambda v: v[:-1]), True, "op")]
    # op geometry: each extent of each op off by one way or another
    names = {4: "C", 5: "H", 6: "W", 7: "Co", 8: "Ho", 9: "Wo"}
    for op in range(6):
        for pos, name in names.items():
            if op in (0, 3, 5) or name in ("H", "Co"):
                e.append((f"op{op}-{name}-inflated", _set(("ops", op, "ints", pos), lambda v: 2 * v + 1), True, f"op {op}"))
        e.append((f"op{op}-reads-unwritten", _set(("ops", op, "ints", 0), 3 if op == 0 else 0 if op == 4 else 1), True,
                  f"op {op}"))
        e.append((f"op{op}-writes-input", _set(("ops", op, "ints", 2), 0), True, f"op {op}"))
    for kind in ("conv", 0, 19, 99, -1, None, 1.5, True, [1]):  # 19: one past the last kind (issue 22 added 12 to 18)
        e.append((f"op0-kind-{kind}", _set(("ops", 0, "kind"), kind), True, "kind"))
    e += [("op0-ints-float", _set(("ops", 0, "ints", 4), 3.0), True, "op 0"),
          ("op0-ints-string", _set(("ops", 0, "ints", 5), "32"), True, "op 0"),
          ("op0-ints-2e40", _set(("ops", 0, "ints", 7), 2**40), True, "op 0"),
          ("op0-ints-negative", _set(("ops", 0, "ints", 6), -32), True, "op 0"),
          ("op0-ints-short", _set(("ops", 0, "ints"), lambda v: v[:9]), True, "op 0"),
          ("op0-ints-long", _set(("ops", 0, "ints"), lambda v: [*v, 1]), True, "op 0"),
          ("op0-ints-missing", _set(("ops", 0, "ints"), _DEL), True, "op 0"),
          ("op0-act-9", _set(("ops", 0, "ints", 3), 9), True, "op 0"),
          ("op1-in1-residual-unwritten", _set(("ops", 1, "ints", 1), 3), True, "op 1"),
          ("op4-in1-on-a-pool", _set(("ops", 4, "ints", 1), 2), True, "op 4"),
          ("op5-output-shape-0", _set(("ops", 5, "ints", 7), 0), True, "op 5"),
          ("op0-kernel-type-gemv", _set(("ops", 0, "kernel", "type"), "gemv"), True, "op 0"),
          ("op5-kernel-type-conv", _set(("ops", 5, "kernel", "type"), "conv"), True, "op 5"),
          ("op0-kernel-null", _set(("ops", 0, "kernel"), None), True, "op 0"),
          ("op4-kernel-added", _set(("ops", 4, "kernel"), {"type": "conv"}), True, "op 4"),
          ("op0-kernel-geom-co", _set(("ops", 0, "kernel", "geom", 0), 64), True, "op 0"),
          ("op0-kernel-geom-stride", _set(("ops", 0, "kernel", "geom", 4), 1), True, "op 0"),
          ("op0-kernel-geom-short", _set(("ops", 0, "kernel", "geom"), lambda v: v[:5]), True, "op 0"),
          ("op0-kernel-rows-3", _set(("ops", 0, "kernel", "rows"), 3), True, "op 0"),
          ("op0-kernel-w-missing", _set(("ops", 0, "kernel", "w"), _DEL), True, "op 0"),
          ("op0-kernel-w-is-ch", _set(("ops", 0, "kernel", "w"), "op0.ch"), True, "op 0"),
          ("op0-kernel-ch-is-w", _set(("ops", 0, "kernel", "ch"), "op0.w"), True, "op 0"),
          ("op0-kernel-bias-other", _set(("ops", 0, "kernel", "bias"), "op2.bias"), True, "op 0"),
          ("op5-kernel-in", _set(("ops", 5, "kernel", "in"), 65), True, "op 5"),
          ("op5-kernel-out", _set(("ops", 5, "kernel", "out"), 11), True, "op 5"),
          ("op0-floats-missing", _set(("ops", 0, "floats"), "op9.floats"), True, "op 0"),
          ("op0-floats-is-w", _set(("ops", 0, "floats"), "op0.w"), True, "op 0"),
          ("op-not-object", _set(("ops", 2), [1, 2]), True, "op 2"),
          ("ops-empty", _set(("ops",), []), True, "ops"),
          ("ops-missing", _set(("ops",), _DEL), True, "ops"),
          ("ops-reversed", _set(("ops",), lambda v: v[::-1]), True, "op 0"),
          ("ops-first-dropped", _set(("ops",), lambda v: v[1:]), True, "op 0"),
          ("ops-last-dropped", _set(("ops",), lambda v: v[:-1]), True, "output"),
          ("ops-pool-first", _set(("ops",), lambda v: [v[4], *v]), True, "op 0")]
    # shapes
    for name, value in (("zero", [0]), ("empty", []), ("ten-zero", [10, 0]), ("negative", [-10]), ("string", "10"),
                        ("float", [10.0]), ("bigger", [20]), ("nested", [[10]])):
        e.append((f"output-shape-{name}", _set(("output_shape",), value), True, "output"))
    for name, value in (("smaller", [3, 16, 16]), ("larger", [3, 64, 64]), ("empty", []),
                        ("zero", [0, 32, 32]), ("five-dims", [1, 1, 3, 32, 32])):
        e.append((f"input-shape-{name}", _set(("input_shape",), value), True, "input"))
    # the header's own integers
    for key, value in (("threads", 0), ("threads", 10**6), ("threads", -1), ("threads", "1"), ("batch_size", 0),
                       ("batch_size", 2**40), ("precision", "float64"), ("precision", 16)):
        e.append((f"header-{key}-{value}", _set((key,), value), True, key))
    # the arrays' index
    e += [("array-offset-past-end", _set(("arrays", "op0.w", "offset"), 1 << 30), True, "op0.w"),
          ("array-offset-negative", _set(("arrays", "op0.w", "offset"), -64), True, "op0.w"),
          ("array-offset-unaligned", _set(("arrays", "op0.w", "offset"), 196), True, "op0.w"),
          ("array-offset-float", _set(("arrays", "op0.w", "offset"), 192.0), True, "op0.w"),
          ("array-shape-bigger", _set(("arrays", "op0.w", "shape", 0), 6000), True, "op0.w"),
          ("array-shape-huge", _set(("arrays", "op0.w", "shape", 0), 2**62), True, "op0.w"),
          ("array-shape-negative", _set(("arrays", "op0.w", "shape", 0), -6), True, "op0.w"),
          ("array-shape-smaller", _set(("arrays", "op0.w", "shape", 0), 5), True, "op 0"),
          ("array-dtype-float64", _set(("arrays", "op0.w", "dtype"), "float64"), True, "op0.w"),
          ("array-dtype-int32", _set(("arrays", "op0.w", "dtype"), "int32"), True, "op 0"),
          ("array-dtype-list", _set(("arrays", "op0.w", "dtype"), ["float32"]), True, "op0.w"),
          ("array-missing", _set(("arrays", "op3.ch"), _DEL), True, "op 3"),
          ("arrays-not-object", _set(("arrays",), [1]), True, "arrays"),
          ("weights-file-elsewhere", _set(("weights", "file"), "../plan.json"), True, "weights"),
          ("weights-sha-wrong", _set(("weights", "sha256"), "0" * 64), False, "sha256"),
          ("format-other", _set(("format",), "uniprune.lean/9"), True, "format")]
    # weights.bin's bytes, the sha256 updated to match (so only the deeper checks can refuse them)
    for op in (0, 1, 3):
        e += [(f"op{op}-panel-ptr-negative", _blob_int32(f"op{op}.panel_ptr", 1, -5), True, f"op {op}"),
              (f"op{op}-panel-ptr-decreasing", _blob_int32(f"op{op}.panel_ptr", 2, 0), True, f"op {op}"),
              (f"op{op}-panel-ptr-last-huge", _blob_int32(f"op{op}.panel_ptr", -1, 2**31 - 1), True, f"op {op}"),
              (f"op{op}-panel-ptr-first", _blob_int32(f"op{op}.panel_ptr", 0, 1), True, f"op {op}"),
              (f"op{op}-ch-out-of-range", _blob_int32(f"op{op}.ch", 0, 4096), True, f"op {op}"),
              (f"op{op}-ch-negative", _blob_int32(f"op{op}.ch", 0, -1), True, f"op {op}")]
    e += [("op5-panel-ptr-negative", _blob_int32("op5.panel_ptr", 1, -1), True, "op 5"),
          ("op5-ch-out-of-range", _blob_int32("op5.ch", 0, 64), True, "op 5"),
          ("op0-clamp-nan", _blob_float("op0.floats", 0, float("nan")), True, "op 0"),
          ("op2-clamp-inf", _blob_float("op2.floats", 1, float("inf")), True, "op 2"),
          ("weights-random", _blob_replace(lambda b: np.random.default_rng(0).integers(0, 256, len(b), np.uint8).tobytes()),
           True, "op 0"),
          ("weights-truncated", _blob_replace(lambda b: bytes(b[: len(b) // 2])), True, "outside"),
          ("weights-truncated-stale-sha", _blob_replace(lambda b: bytes(b[: len(b) // 2])), False, "sha256"),
          ("weights-empty", _blob_replace(lambda b: b""), True, "outside")]
    # plan.json's text: strict JSON
    e += [("plan-nested-100000", "[" * 100000 + "]" * 100000, False, "nested"),
          ("plan-not-json", "{oops", False, "json"),
          ("plan-empty", "", False, "json"),
          ("plan-list", "[1, 2]", False, "format"),
          ("plan-nan", '{"format": "uniprune.lean/1", "threads": NaN}', False, "nan"),
          ("plan-huge-int", '{"format": "uniprune.lean/1", "threads": 1' + "0" * 5000 + "}", False, "json")]
    return e


PLAN_EDITS = _plan_edits()
# the artifact's own loader reads every edit; bench (whose reader is the same module, behind the CLI) every second
# edit of the header's text, shapes, arrays and weights, and every fourth of the ops' (each bench case builds the
# checkpoint's model, ~0.3 s, and the added cases must stay within about a minute)
ARTIFACT_CASES = [("loader", *edit) for edit in PLAN_EDITS] + [
    ("bench", *edit) for i, edit in enumerate(PLAN_EDITS) if i % (4 if edit[0].startswith("op") else 2) == 0]


@pytest.fixture(scope="module")
def artifact(files) -> Path:
    out = files["dir"] / "art"
    if not out.exists():
        assert main(["export", "--compressed", str(files["compressed"]), "--out", str(out)]) == 0
    return out


def _edited_copy(artifact: Path, folder: Path, edit: Any, update_sha: bool) -> Path:
    copy = folder / "edited"
    shutil.copytree(artifact, copy)
    if isinstance(edit, str):
        (copy / "plan.json").write_text(edit)
        return copy
    header = json.loads((copy / "plan.json").read_text())
    blob = bytearray((copy / "weights.bin").read_bytes())
    edit(header, blob)
    if update_sha:
        header["weights"]["sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
    (copy / "weights.bin").write_bytes(bytes(blob))
    (copy / "plan.json").write_text(json.dumps(header, allow_nan=True))
    return copy


def _one_error_line(err: str, prefix: str, fragment: str) -> None:
    assert "Traceback" not in err, err[-800:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-800:]
    assert errors[0].startswith(prefix) and fragment.lower() in errors[0].lower(), errors[0]


@pytest.mark.parametrize(("reader", "case_id", "edit", "update_sha", "fragment"), ARTIFACT_CASES,
                         ids=[f"{c[1]}-{c[0]}" for c in ARTIFACT_CASES])
def test_edited_artifact(reader, case_id, edit, update_sha, fragment, artifact, files, tmp_path, capsys, monkeypatch):
    """bench (uniprune's own reader and kernels) and the artifact's own loader (its main, compiling the C it
    ships) refuse the edited plan in one line, before any native call runs it, and change no file."""
    copy = _edited_copy(artifact, tmp_path, edit, update_sha)
    before, before_dir = _snapshot(copy), _snapshot(files["dir"])
    if reader == "bench":
        code = main(["bench", "--compressed", str(copy), "--no-table", "--engines", "torch", "--repeats", "1",
                     "--threads", "1"])
        prefix = "uniprune bench: error:"
    else:
        monkeypatch.setenv("UNIPRUNE_LEAN_CACHE", str(files["dir"].parent / "lean-cache"))
        code = uniprune_lean.main([str(copy), "--threads", "1"])
        prefix = "uniprune_lean: error:"
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err[-800:])
    _one_error_line(captured.err, prefix, fragment)
    assert _snapshot(copy) == before and _snapshot(files["dir"]) == before_dir


def _chattr(path: Path, flag: str) -> bool:
    import subprocess

    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _hold_flock(path: Path) -> Any:
    """Open and flock ``path`` as another process would (flock locks belong to an open file, so a second
    open in this process conflicts just as another process's does)."""
    import fcntl

    fh = open(path, "a+")  # noqa: SIM115 - closed by the test
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


# (id, argv, what is held or made immutable: "immutable-file:X", "immutable-dir:X", "out-lock:X", "run-lock", fragment)
HELD_CASES = [
    ("train-force-over-immutable", ["train", "--epochs", "1", "--force", "--out", "{dir}/held/imm.pt"], "immutable-file:imm.pt",
     "cannot be replaced"),
    ("finetune-force-over-immutable", ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--checkpoint", "{dense}",
                                       "--force", "--out", "{dir}/held/imm.pt", "--no-latency"], "immutable-file:imm.pt",
     "cannot be replaced"),
    ("replay-force-over-immutable", ["replay", "--policy", "{policy}", "--force", "--out", "{dir}/held/imm.json"],
     "immutable-file:imm.json", "cannot be replaced"),
    ("export-into-immutable-folder", ["export", "--compressed", "{compressed}", "--out", "{dir}/held/ro/art"],
     "immutable-dir:ro", "cannot write"),
    ("train-into-immutable-folder", ["train", "--epochs", "1", "--out", "{dir}/held/ro/t.pt"], "immutable-dir:ro", "cannot write"),
    ("demo-into-immutable-folder", ["demo", "--out", "{dir}/held/ro/demo"], "immutable-dir:ro", "cannot write"),
    ("train-out-locked", ["train", "--epochs", "1", "--out", "{dir}/held/t.pt"], "out-lock:t.pt", "another uniprune process"),
    ("finetune-out-locked", ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--checkpoint", "{dense}", "--out",
                             "{dir}/held/f.pt", "--no-latency"], "out-lock:f.pt", "another uniprune process"),
    ("replay-out-locked", ["replay", "--policy", "{policy}", "--out", "{dir}/held/p.json"], "out-lock:p.json",
     "another uniprune process"),
    ("export-out-locked", ["export", "--compressed", "{compressed}", "--out", "{dir}/held/art"], "out-lock:art",
     "another uniprune process"),
    ("demo-out-locked", ["demo", "--out", "{dir}/held/demo"], "out-lock:demo", "another uniprune process"),
    ("finetune-run-dir-locked", ["finetune", "--run-dir", "{dir}/held/run", "--out", "{dir}/held/f2.pt", "--no-latency",
                                 "--epochs", "2"], "run-lock", "another process"),
    ("report-run-dir-locked", ["report", "--run-dir", "{dir}/held/run"], "run-lock", "another process"),
    ("search-resume-run-dir-locked", ["search", "--run-dir", "{dir}/held/run", "--resume", "--episodes", "3"], "run-lock",
     "another process"),
]


@pytest.mark.parametrize(("case_id", "argv", "held", "fragment"), HELD_CASES, ids=[c[0] for c in HELD_CASES])
def test_held_or_immutable_output(case_id, argv, held, fragment, files, capsys, monkeypatch):
    """A file or folder the file system will not let us replace, or an --out / run directory another process is
    writing: one line, before any training, and nothing changed."""
    base = files["dir"] / "held"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    kind, _, name = held.partition(":")
    undo: list[Callable[[], None]] = []
    try:
        if kind == "immutable-file":
            (base / name).write_bytes(b"the user's file")
            if not _chattr(base / name, "+i"):
                pytest.skip("chattr +i is not available here (needs root on a file system that supports it)")
            undo.append(lambda: _chattr(base / name, "-i"))
        elif kind == "immutable-dir":
            (base / name).mkdir()
            if not _chattr(base / name, "+i"):
                pytest.skip("chattr +i is not available here (needs root on a file system that supports it)")
            undo.append(lambda: _chattr(base / name, "-i"))
        elif kind == "out-lock":
            fh = _hold_flock(base / f".{name}.lock")
            undo.append(fh.close)
        else:
            shutil.copytree(files["run"], base / "run", ignore=shutil.ignore_patterns("run.lock"))
            fh = _hold_flock(base / "run" / "run.lock")
            undo.append(fh.close)
        monkeypatch.chdir(files["dir"])
        before = _snapshot(files["dir"])
        args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
        code = main(args)
        captured = capsys.readouterr()
        assert code == 2, (code, captured.err[-600:])
        _one_error_line(captured.err, f"uniprune {args[0]}: error:", fragment)
        after = _snapshot(files["dir"])
        assert {k: v for k, v in after.items() if k in before} == before
        assert not [k for k in after if k not in before], sorted(set(after) - set(before))
    finally:
        for step in undo:
            step()
        shutil.rmtree(base, ignore_errors=True)
