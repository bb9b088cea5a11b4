"""`uniprune export` and the artifact it writes (compressors/formats/artifact.py, compressors/native/uniprune_lean/).

Every model is exported from a compressed checkpoint with random pruned and unified blocks, and the artifact,
run by its own loader (imported from the artifact directory), must match the masked dense model run by torch
(relative error <= 1e-4 of the output's scale). No test asserts a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from uniprune.compressors.core.blocks import compressible_layers
from uniprune.compressors.core.projection import structured_weight
from uniprune.compressors.formats.checkpoint import save_compressed
from uniprune.compressors.latency.table import random_structure
from uniprune.compressors.native import kernels, uniprune_lean
from uniprune.compressors.native.plan import LeanModel, LeanSpec, lower_spec, output_tolerance
from uniprune.search.cli import main
from uniprune.search.models import build_model

TOL = 1e-4


def import_loader(directory: Path):
    """The artifact's own loader package ``uniprune_lean/``, imported by file path: what its users run (no
    uniprune verb ever imports it)."""
    import hashlib
    import importlib.util

    path = Path(directory) / "uniprune_lean"
    name = f"_artifact_loader_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lean_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private build cache for the loader: the C sources compile once for the whole module (~4 s)."""
    return tmp_path_factory.mktemp("lean-cache")


def _compressed(path: Path, name: str, shape: tuple[int, int, int], seed: int) -> torch.nn.Module:
    """A compressed checkpoint of ``name`` (random init and BatchNorm statistics, random 50 % pruned and 25 %
    unified blocks in every compressible layer); returns the masked dense model, the reference."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, input_shape=shape).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    structures = {s.name: random_structure(s.grid, 0.5, 0.25, g) for s in compressible_layers(model)}
    with torch.no_grad():
        for layer, st in structures.items():
            m = model.get_submodule(layer)
            m.weight.copy_(structured_weight(m.weight.detach(), st))
    save_compressed(path, model, structures, model_name=name, num_classes=10, input_shape=shape)
    return model


def _export(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | None, str]:
    """``uniprune export ARGS --json``, in fp32 unless ``args`` name a precision (auto is bf16 on a bf16 CPU)."""
    precision = [] if "--precision" in args else ["--precision", "fp32"]
    code = main(["export", *args, *precision, "--json"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and lines else None), err


def _rel_err(got: np.ndarray, ref: torch.Tensor) -> float:
    return float((torch.from_numpy(got) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name,shape", [("digits-cnn", (1, 8, 8)), ("cifar-resnet20", (3, 32, 32)),
                                        ("cifar-vgg16", (3, 32, 32)), ("tv:mobilenet_v2", (3, 32, 32))])
def test_artifact_matches_masked_dense(name, shape, tmp_path, capsys, lean_cache, single_thread):
    ckpt = tmp_path / "model.pt"
    reference = _compressed(ckpt, name, shape, seed=len(name))
    code, result, err = _export(capsys, "--compressed", str(ckpt), "--out", str(tmp_path / "art"))
    assert code == 0, err
    files = {str(Path(f).relative_to(tmp_path / "art")) for f in result["files"]}
    loader_files = {f"uniprune_lean/{p.name}" for p in Path(uniprune_lean.__file__).parent.glob("*.py")}
    assert files == {"plan.json", "weights.bin", "uniprune_kernels.c", "uniprune_plan.c", "uniprune_bf16.c",
                     "uniprune_common.h", "README.md", *loader_files}
    assert "uniprune_lean/__init__.py" in files and "uniprune_lean/verify.py" in files
    assert all(Path(f).is_file() for f in result["files"])
    assert result["max_rel_error"] <= TOL and result["input_shape"] == list(shape) and result["output_shape"] == [10]
    header = json.loads((tmp_path / "art" / "plan.json").read_text())
    assert header["source"]["model_name"] == name and header["source"]["input_shape"] == list(shape)
    assert not list(tmp_path.glob(".art.*"))  # the temporary directory was renamed, nothing left over
    loader = import_loader(tmp_path / "art")
    assert loader is not uniprune_lean  # the artifact's own copy, imported by file path
    model = loader.Model(tmp_path / "art", cache_dir=lean_cache)
    for batch in (1, 3):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = reference(x)
        got = model.run(x.numpy())
        assert got.shape == (batch, 10) and got.dtype == np.float32
        assert _rel_err(got, ref) <= TOL


def test_artifact_runs_without_torch_or_uniprune(tmp_path, capsys, lean_cache):
    ckpt = tmp_path / "digits.pt"
    reference = _compressed(ckpt, "digits-cnn", (1, 8, 8), seed=3)
    assert _export(capsys, "--compressed", str(ckpt), "--out", str(tmp_path / "art"))[0] == 0
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "sys.path.insert(0, '.')  # -I leaves the working directory off the path; a user adds the artifact's\n"
        "import uniprune_lean\n"
        f"m = uniprune_lean.Model('.', cache_dir={str(lean_cache)!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m.run(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "assert not any(k == 'uniprune' or k.startswith('uniprune.') for k in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path / "art", env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        assert _rel_err(np.load(tmp_path / "y.npy"), reference(x)) <= TOL
    # the README's check, run in the artifact's folder: the loader package finds the plan beside it
    proc = subprocess.run([sys.executable, "-m", "uniprune_lean", "--batch-size", "2", "--threads", "1"],
                          cwd=tmp_path / "art", env={**env, "UNIPRUNE_LEAN_CACHE": str(lean_cache)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "input [2, 1, 8, 8] -> output [2, 10]" in proc.stdout


def test_in_process_plan_round_trips_through_files(tmp_path, single_thread):
    """A LeanModel is built from its serialised form: saving and loading it changes nothing it computes."""
    model = build_model("cifar-resnet20", input_shape=(3, 16, 16)).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    spec = lower_spec(model, x, threads=1)
    spec.save(tmp_path / "plan")
    again = LeanSpec.load(tmp_path / "plan")
    assert again.header["ops"] == spec.header["ops"]
    assert all(np.array_equal(again.arrays[k], v) for k, v in spec.arrays.items())
    assert torch.equal(LeanModel(again, threads=1)(x), LeanModel(spec, threads=1)(x))


@pytest.mark.parametrize("impl", ["im2col_linear", "im2col_conv"])
def test_saved_im2col_plans_run_in_the_loader(impl, tmp_path, lean_cache, single_thread):
    """The conv forms the plan may pick on small maps survive the files too (export picks them by timing)."""
    model = build_model("digits-cnn", input_shape=(1, 8, 8)).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    spec = lower_spec(model, x, threads=1, choose=impl)
    assert any(op["kind"] == 11 for op in spec.header["ops"])  # OP_IM2COL
    spec.save(tmp_path)
    loaded = uniprune_lean.Model(tmp_path, source_dir=Path(kernels.SOURCE).parent, cache_dir=lean_cache, threads=1)
    with torch.no_grad():
        assert _rel_err(loaded.run(x.numpy()), model(x)) <= TOL


def test_damaged_weights_are_refused(tmp_path):
    spec = lower_spec(build_model("digits-cnn", input_shape=(1, 8, 8)).eval(), torch.randn(1, 1, 8, 8), threads=1)
    spec.save(tmp_path)
    blob = bytearray((tmp_path / "weights.bin").read_bytes())
    blob[100] ^= 1
    (tmp_path / "weights.bin").write_bytes(bytes(blob))
    with pytest.raises(uniprune_lean.LeanError, match="sha256"):
        uniprune_lean.read_plan(tmp_path)


def test_loader_refuses_bad_input(tmp_path, capsys, lean_cache):
    ckpt = tmp_path / "digits.pt"
    _compressed(ckpt, "digits-cnn", (1, 8, 8), seed=6)
    assert _export(capsys, "--compressed", str(ckpt), "--out", str(tmp_path / "art"))[0] == 0
    model = import_loader(tmp_path / "art").Model(tmp_path / "art", cache_dir=lean_cache)
    with pytest.raises(ValueError, match=r"float32 array \[N, 1, 8, 8\]"):
        model.run(np.zeros((1, 1, 8, 9), np.float32))
    with pytest.raises(ValueError, match="float32"):
        model.run(np.zeros((1, 1, 8, 8), np.float64))
    assert model.run(np.zeros((0, 1, 8, 8), np.float32)).shape == (0, 10)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((2, 1, 8, 8), np.float32)
        x[1, 0, 3, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            model.run(x)
        assert model.run(x, check_finite=False).shape == (2, 10)  # the caller's choice: no check, no error


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uniprune export: error:") and needle in lines[0]


def test_bad_inputs_are_one_line_errors_and_nothing_is_overwritten(tmp_path, capsys):
    ckpt = tmp_path / "digits.pt"
    _compressed(ckpt, "digits-cnn", (1, 8, 8), seed=7)
    out = tmp_path / "art"
    # a missing checkpoint: nothing written, no temporary directory left
    code, _, err = _export(capsys, "--compressed", str(tmp_path / "missing.pt"), "--out", str(out))
    _one_line_error(code, err, "does not exist")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["digits.pt"]
    # a checkpoint that is not a compressed one
    plain = tmp_path / "plain.pt"
    torch.save(build_model("digits-cnn", input_shape=(1, 8, 8)).state_dict(), plain)
    code, _, err = _export(capsys, "--compressed", str(plain), "--out", str(out))
    _one_line_error(code, err, "not a uniprune compressed checkpoint")
    assert not out.exists()
    # an existing --out without --force, and a non-artifact one even with --force: left as they were
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for extra, needle in (([], "--force"), (["--force"], "not a uniprune artifact")):
        code, _, err = _export(capsys, "--compressed", str(ckpt), "--out", str(out), *extra)
        _one_line_error(code, err, needle)
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_force_replaces_an_earlier_artifact(tmp_path, capsys):
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    _compressed(first, "digits-cnn", (1, 8, 8), seed=8)
    _compressed(second, "digits-cnn", (1, 8, 8), seed=9)
    out = tmp_path / "art"
    assert _export(capsys, "--compressed", str(first), "--out", str(out))[0] == 0
    before = (out / "weights.bin").read_bytes()
    code, _, err = _export(capsys, "--compressed", str(second), "--out", str(out))
    _one_line_error(code, err, "already exists")
    assert (out / "weights.bin").read_bytes() == before
    assert _export(capsys, "--compressed", str(second), "--out", str(out), "--force")[0] == 0
    header = json.loads((out / "plan.json").read_text())
    assert header["source"]["checkpoint"] == str(second.resolve())
    assert (out / "weights.bin").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "art", "b.pt"]


def test_bench_times_the_artifact(tmp_path, capsys, lean_cache, monkeypatch):
    monkeypatch.setenv("UNIPRUNE_LEAN_CACHE", str(lean_cache))
    ckpt = tmp_path / "digits.pt"
    _compressed(ckpt, "digits-cnn", (1, 8, 8), seed=10)
    out = tmp_path / "art"
    assert _export(capsys, "--compressed", str(ckpt), "--out", str(out))[0] == 0
    code = main(["bench", "--compressed", str(out), "--engines", "torch", "--threads", "1", "--repeats", "3",
                 "--no-table", "--batch-size", "2", "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["runtime"] == "artifact" and result["max_rel_error"] <= TOL and result["precision"] == "fp32"
    assert set(result["engines"]) == {"torch"} and result["compressed_ms"] > 0 and result["batch_size"] == 2
    assert result["speedup"] == pytest.approx(1 / result["latency_ratio"])
    # the dense model must be the checkpoint it was exported from
    other = tmp_path / "other.pt"
    _compressed(other, "digits-cnn", (1, 8, 8), seed=11)
    code = main(["bench", "--compressed", str(out), "--checkpoint", str(other), "--engines", "torch", "--no-table"])
    err = capsys.readouterr().err
    assert code == 2 and "sha256 differs" in err and len(err.strip().splitlines()) == 1


def test_bf16_artifact_records_its_precision_and_matches(tmp_path, capsys, lean_cache, single_thread):
    """A bf16 export stores bf16 weights, says so in plan.json, and its loader's output stays within the bf16
    tolerance of the float32 model (on AMX tiles here if the CPU has them, else the float32 kernels)."""
    ckpt = tmp_path / "r20.pt"
    reference = _compressed(ckpt, "cifar-resnet20", (3, 32, 32), seed=12)
    code, result, err = _export(capsys, "--compressed", str(ckpt), "--out", str(tmp_path / "art"), "--precision", "bf16")
    assert code == 0, err
    assert result["precision"] == "bf16" and result["max_rel_error"] <= output_tolerance("bf16")
    header = json.loads((tmp_path / "art" / "plan.json").read_text())
    assert header["precision"] == "bf16" and header["source"]["precision"] == "bf16"
    convs = [op["kernel"] for op in header["ops"] if (op.get("kernel") or {}).get("type") == "conv"]
    assert convs and all(k["precision"] == "bf16" and header["arrays"][k["w"]]["dtype"] == "bfloat16" for k in convs)
    loader = import_loader(tmp_path / "art")
    model = loader.Model(tmp_path / "art", cache_dir=lean_cache, allow_fp32_fallback=True)
    on_tiles = [k for k in convs if k.get("engine") != "fp32"]  # the rest were timed faster on the fp32 kernels
    assert model.precision == "bf16" and model.amx_convs == (len(on_tiles) if "amx_bf16" in kernels.bf16_units() else 0)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert 0 < _rel_err(model.run(x.numpy()), reference(x)) <= output_tolerance("bf16")


def test_bf16_plans_check_the_cpu():
    """auto is bf16 exactly where the CPU has avx512_bf16 or amx_bf16; a bf16 plan is refused in one line where
    it has neither, and an unknown precision too."""
    zen3, zen4, spr = frozenset({"avx2", "fma"}), frozenset({"avx512f", "avx512_bf16"}), frozenset({"amx_bf16", "avx512f"})
    assert [uniprune_lean.resolve_precision("auto", f) for f in (zen3, zen4, spr)] == ["fp32", "bf16", "bf16"]
    assert uniprune_lean.resolve_precision("fp32", spr) == "fp32" and uniprune_lean.resolve_precision("bf16", zen3) == "bf16"
    with pytest.raises(uniprune_lean.LeanError) as info:
        uniprune_lean.check_precision("bf16", zen3)
    assert "avx512_bf16" in str(info.value) and "--precision fp32" in str(info.value) and "\n" not in str(info.value)
    uniprune_lean.check_precision("bf16", zen4)
    uniprune_lean.check_precision("fp32", zen3)
    with pytest.raises(uniprune_lean.LeanError):
        uniprune_lean.resolve_precision("fp16", spr)


def test_export_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--compressed", "--out", "--batch-size", "--threads", "--force", "--precision", "--json"):
        assert option in text


def inner_policy(tmp_path: Path, model: torch.nn.Module, name: str) -> tuple[Path, Path]:
    """``model``'s checkpoint and a policy pruning 75 % of every compressible layer but the first and the last."""
    ckpt = tmp_path / "dense.pt"
    torch.save(model.state_dict(), ckpt)
    layers = [s.name for s in compressible_layers(model)][1:-1]
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"format": "uniprune.policy/1", "model": name,
                                  "layers": {n: {"prune": 0.75, "unify": 0.0} for n in layers}}))
    return ckpt, policy


def test_export_policy_projects_a_model_without_fine_tuning(tmp_path, capsys, lean_cache, single_thread):
    """``export --policy``: the model with the policy's structure imposed on its checkpoint's weights, deployed as it is."""
    torch.manual_seed(3)
    model = build_model("tv:mobilenet_v3_small", num_classes=10, input_shape=(3, 32, 32)).eval()
    ckpt, policy = inner_policy(tmp_path, model, "tv:mobilenet_v3_small")
    layers = list(json.loads(policy.read_text())["layers"])
    out = tmp_path / "art"
    code, result, err = _export(capsys, "--policy", str(policy), "--model", "tv:mobilenet_v3_small", "--checkpoint",
                                str(ckpt), "--input-shape", "3,32,32", "--num-classes", "10", "--out", str(out))
    assert code == 0, err
    assert result["max_rel_error"] <= TOL and result["output_shape"] == [10]
    header = json.loads((out / "plan.json").read_text())
    assert header["source"]["policy_sha256"] and header["source"]["model_name"] == "tv:mobilenet_v3_small"
    # the deployed plan runs 75 % fewer weights in the layers the policy names
    kept = sum(int(np.count_nonzero(np.asarray(uniprune_lean.read_plan(out)[1][op["kernel"]["w"]])))
               for op in header["ops"] if op.get("kernel") and op["layer"] in layers)
    total = sum(model.get_submodule(n).weight.numel() for n in layers)
    assert kept <= 0.3 * total
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert import_loader(out).Model(out, cache_dir=lean_cache).run(x).shape == (2, 10)


def test_export_policy_needs_a_model_and_compressed_takes_no_model(tmp_path, capsys):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"format": "uniprune.policy/1", "layers": {}}))
    code, _, err = _export(capsys, "--policy", str(policy), "--out", str(tmp_path / "a"))
    assert code != 0 and "--policy needs --model" in err and "Traceback" not in err
    code, _, err = _export(capsys, "--compressed", str(policy), "--model", "digits-cnn", "--out", str(tmp_path / "b"))
    assert code != 0 and "go with --policy" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bench_never_runs_the_artifacts_code(tmp_path, capsys, monkeypatch):
    """bench reads only plan.json and weights.bin: a line added to the artifact's loader or C sources is never
    run or compiled (the uniprune kernels run the plan), and the figures still come."""
    monkeypatch.setenv("UNIPRUNE_LEAN_CACHE", str(tmp_path / "lean-cache"))
    ckpt = tmp_path / "digits.pt"
    _compressed(ckpt, "digits-cnn", (1, 8, 8), seed=12)
    out = tmp_path / "art"
    assert _export(capsys, "--compressed", str(ckpt), "--out", str(out))[0] == 0
    marker = tmp_path / "ran.txt"
    with open(out / "uniprune_lean" / "__init__.py", "a") as fh:
        fh.write(f"\nopen({str(marker)!r}, 'w').write('the artifact ran')\n")
    for name in ("uniprune_kernels.c", "uniprune_plan.c"):
        with open(out / name, "a") as fh:
            fh.write("\n#error compiled the artifact's C\n")
    code = main(["bench", "--compressed", str(out), "--engines", "torch", "--threads", "1", "--repeats", "3",
                 "--no-table", "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    # nothing imported (no marker); nothing compiled from the artifact (its C sources would fail on the #error)
    assert not marker.exists()
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["runtime"] == "artifact" and result["max_rel_error"] <= TOL and result["compressed_ms"] > 0
    assert not any(name.startswith("_uniprune_lean_") or name.startswith("_artifact_loader_") for name in sys.modules
                   if str(out) in str(getattr(sys.modules[name], "__file__", "")))


def test_verifier_reads_bf16_plans(single_thread):
    """A bf16 plan passes the verifier; its weights' dtype, each kernel's precision and engine are checked."""
    torch.manual_seed(14)
    model = build_model("digits-cnn", num_classes=10, input_shape=(1, 8, 8)).eval()
    spec = lower_spec(model, torch.randn(2, 1, 8, 8), threads=1, choose="direct", precision="bf16")
    assert spec.header["precision"] == "bf16"
    uniprune_lean.verify_plan(spec.header, spec.arrays)
    conv = next(i for i, op in enumerate(spec.header["ops"]) if (op.get("kernel") or {}).get("type") == "conv")

    def refused(header: dict, match: str) -> None:
        with pytest.raises(uniprune_lean.LeanError, match=match):
            uniprune_lean.verify_plan(header, spec.arrays)

    refused({**spec.header, "precision": "fp32"}, "precision")  # bf16 weights in a plan that says fp32
    ops = json.loads(json.dumps(spec.header["ops"]))
    ops[conv]["kernel"]["engine"] = "gpu"
    refused({**spec.header, "ops": ops}, "engine")
    refused({**spec.header, "precision": "fp16"}, "precision")
