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
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import project_model
from uniprune.compressors.formats.checkpoint import save_compressed
from uniprune.search.cli import main
from uniprune.search.models import build_model, save_checkpoint

FAST_ENV = ["--latency-model", "macs", "--val-samples", "32", "--eval-batch-size", "32"]


class _Payload:
    def __reduce__(self):
        return (print, ("uniprune-bad-input-payload-ran",))


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
    f["zip"] = d / "agent.zip"
    with zipfile.ZipFile(f["zip"], "w") as z:
        z.writestr("data", pickle.dumps(_Payload()))

    # a run directory with an agent, and broken copies of it
    run = d / "run"
    assert main(["search", *FAST_ENV, "--checkpoint", str(f["dense"]), "--episodes", "2", "--warmup", "1",
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
    pol = {"policy_text": "not valid JSON", "policy_list": "object", "policy_format": "format", "policy_prune": "prune",
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
    c += [
        ("train-dataset-unknown", ["train", "--dataset", "mnist-c", "--out", "{dir}/t.pt"], "mnist-c"),
        ("train-imagefolder-empty", ["train", "--dataset", "imagefolder", "--data", "{folder_empty}", "--out", "{dir}/t.pt"],
         "emptyfolder"),
        ("train-imagefolder-tar-cut", ["train", "--dataset", "imagefolder", "--data", "{tar_cut}", "--out", "{dir}/t.pt"],
         "cut.tar.gz"),
        ("train-imagefolder-tar-flat", ["train", "--dataset", "imagefolder", "--data", "{tar_flat}", "--out", "{dir}/t.pt"],
         "flat.tar.gz"),
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
    ]
    for verb, extra, msg in ranges:
        base = {"train": ["train", "--out", "{dir}/t-{n}.pt"],
                "search": ["search", *FAST_ENV, "--checkpoint", "{dense}", "--run-dir", "{dir}/s-{n}"],
                "finetune": ["finetune", "--policy", "{policy}", "--model", "digits-cnn", "--checkpoint", "{dense}",
                             "--out", "{dir}/f-{n}.pt", "--no-latency"],
                "demo": ["demo", "--out", "{dir}/d-{n}"],
                "bench": ["bench", "--model", "digits-cnn", "--policy", "{policy}", "--no-table"],
                "replay": ["replay", "--policy", "{policy}", *FAST_ENV, "--checkpoint", "{dense}", "--out", "{dir}/rp-{n}.json"],
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
