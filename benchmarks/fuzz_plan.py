"""A mutation fuzzer for the lean plan format (issue 21): plan.json, weights.bin and policy files.

Seeds are real plans lowered from small models that between them use most op kinds (conv, linear,
grouped and depthwise conv, both im2col modes, add, act, affine, global and window pools, the ResNets'
slice-pad). Each case mutates a seed, one to three times: a number (boundary values, off by one, huge, float,
negative), a type (string, list, object, null, bool), a deletion, a duplication (list entries, a repeated
JSON key), nesting, reordering, or the bytes of weights.bin (random bytes, int32 extremes over an index
array, truncation), its sha256 then updated (most of the time) so that the verifier's deeper checks run.

Every case goes through the installed reader and verifier in this process (``parse_plan`` + ``verify_plan``):
anything but a LeanError is a finding. A case they accept runs natively in a worker process (one at a time,
restarted when it dies) that builds the plan and runs a batch of 1 and of 3: a crash, a sanitizer report, a
hang or an exception other than LeanError is a finding, and the case is saved. With ``--asan`` the native
library is the AddressSanitizer build (``UNIPRUNE_SANITIZE=address``), loaded through ``LD_PRELOAD`` of
libasan. Policy files get the same mutations through ``Policy.load`` (anything but a PolicyError is a finding).

    nice -n 19 python benchmarks/fuzz_plan.py --cases 1000000 --asan --deadline 23:40
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from uniprune.compressors.native import uniprune_lean as lean  # noqa: E402

ASAN_LIB = "/usr/lib/x86_64-linux-gnu/libasan.so.8"
_INTERESTING = (0, 1, -1, 2, 3, 4, 7, 8, 9, 15, 16, 63, 64, 65, 255, 256, 1023, 1024, 4096, 65535, 65536, 65537,
                1 << 24, (1 << 24) + 1, (1 << 31) - 1, 1 << 31, -(1 << 31), -(1 << 31) - 1, 1 << 32, 1 << 34,
                (1 << 34) + 1, 1 << 40, 1 << 62, (1 << 63) - 1, 1 << 63, -(1 << 63), 1 << 64, 10 ** 21, 10 ** 400)
_OTHER = (0.5, -0.0, 1e21, 1e308, -1e308, 3.0, "1", "", "op0.w", "op0.floats", None, True, False, [], {}, [1, 2],
          {"type": "conv"}, [[[]]])
_WORKER = r"""
import importlib.util, struct, sys
import numpy as np
spec = importlib.util.spec_from_file_location("uniprune_lean_worker", sys.argv[1],
                                              submodule_search_locations=[sys.argv[1].rsplit("/", 1)[0]])
lean = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = lean  # its relative imports find it here
spec.loader.exec_module(lean)
import ctypes
lib = ctypes.CDLL(sys.argv[2])
rng = np.random.default_rng(0)
inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(b"ready\n"); out.flush()
while True:
    head = inp.read(8)
    if len(head) < 8:
        break
    nt, nb = struct.unpack("<II", head)
    text, blob = inp.read(nt), inp.read(nb)
    try:
        header, arrays = lean.parse_plan(text, blob)
        plan = lean.NativePlan(lib, header, arrays)
    except lean.LeanError:
        out.write(b"R\n"); out.flush()
        continue
    codes = []
    for n in (1, 3):
        x = rng.standard_normal((n, *header["input_shape"])).astype(np.float32)
        y = np.empty((n, *header["output_shape"]), np.float32)
        codes.append(plan.run(x.ctypes.data, y.ctypes.data, n, 1 + (n > 1)))
    plan.close()
    out.write(b"0\n" if not any(codes) else b"E\n"); out.flush()
"""


# ------------------------------------------------------------------------------------------- seeds
def _tiny_vit() -> Any:
    """A one-layer vision transformer on 8x8 images: attention, its channel copies, the class token's row concat,
    the position embedding's constant add, channels-across LayerNorm, GELU."""
    import torchvision
    from uniprune.compressors.core.attention import split_attention

    return split_attention(torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2,
                                                                hidden_dim=8, mlp_dim=16, num_classes=10))


def seed_plans() -> list[tuple[dict[str, Any], bytes]]:
    """Three real plans, ``(header, weights blob)``: digits CNN (both im2col modes), ResNet-20 on 8x8 inputs
    (direct convs, slice-pad shortcuts, global pool, linear), a small net of the remaining kinds and a tiny vision
    transformer (attention, row concat, constant add, channels-across LayerNorm)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from uniprune.compressors.native.plan import lower_spec
    from uniprune.search.models import build_model

    class Kinds(nn.Module):
        """grouped and depthwise convs, BatchNorm left as an affine, max and average pools, a plain add."""

        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.g2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(x)
            x = F.relu(self.c1(x))
            y = self.dw(x) + x
            y = self.bn(F.relu(y))
            y = self.g2(y)
            y = F.max_pool2d(y, 2) + F.avg_pool2d(y, 2)
            y = F.avg_pool2d(y, 2)
            return self.fc(torch.flatten(y, 1))

    torch.manual_seed(0)
    seeds = []
    kinds = Kinds().eval()
    kinds.bn.running_mean.uniform_(-0.5, 0.5)
    cases = [(build_model("digits-cnn", num_classes=10, input_shape=(1, 8, 8)), (1, 8, 8), "im2col_linear"),
             (build_model("digits-cnn", num_classes=10, input_shape=(1, 8, 8)), (1, 8, 8), "im2col_conv"),
             (build_model("cifar-resnet20", num_classes=10, input_shape=(3, 8, 8)), (3, 8, 8), "direct"),
             (kinds, (3, 8, 8), "direct"),
             (_tiny_vit(), (3, 8, 8), "direct")]
    for model, shape, choose in cases:
        spec = lower_spec(model.eval(), torch.randn(2, *shape), threads=1, choose=choose)
        blob, index = lean.pack_arrays(spec.arrays)
        header = {**spec.header, "format": lean.FORMAT, "arrays": index,
                  "weights": {"file": lean.WEIGHTS_FILE, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}
        seeds.append((header, blob))
    return seeds


def seed_policy() -> dict[str, Any]:
    """A policy of the digits CNN, as a search writes it."""
    from uniprune.compressors.core.policy import LayerAction, Policy

    return Policy(layers={"conv1": LayerAction(0.25, 0.25), "conv2": LayerAction(0.5, 0.0), "fc": LayerAction(0.0, 0.5)},
                  model="digits-cnn", block_shape={"conv": (8, 4), "linear": (8, 8)}, latency_budget=0.5).to_dict()


# ---------------------------------------------------------------------------------------- mutation
def _paths(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _replace(root: Any, path: tuple, fn: Callable[[Any], Any]) -> Any:
    """``root`` with the value at ``path`` replaced by ``fn(value)`` (``fn`` may return _DELETE); the
    containers along the path are copied, nothing else."""
    if not path:
        return fn(root)
    head, rest = path[0], path[1:]
    copy = dict(root) if isinstance(root, dict) else list(root)
    new = _replace(copy[head], rest, fn)
    if new is _DELETE:
        del copy[head]
    else:
        copy[head] = new
    return copy


_DELETE = object()


def _number(rng: random.Random, old: Any) -> Any:
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        return rng.choice((old + 1, old - 1, old * 2, old // 2, -old, old + rng.randint(-64, 64), old * 1000003))
    return rng.choice(_INTERESTING) if rng.random() < 0.8 else rng.choice(_OTHER)


class Mutator:
    """Mutations of one seed: a JSON document and, for a plan, its weights."""

    def __init__(self, header: dict[str, Any], blob: bytes | None) -> None:
        self.header, self.blob = header, blob
        self.paths = [p for p, _ in _paths(header)]
        self.containers = [p for p, v in _paths(header) if isinstance(v, (dict, list)) and v]
        self.arrays = list(header.get("arrays", {}).items()) if blob is not None else []

    def json_mutation(self, rng: random.Random, doc: Any) -> tuple[Any, str]:
        kind = rng.choice(("number", "number", "number", "type", "delete", "duplicate", "nest", "swap"))
        if kind in ("delete", "duplicate", "swap"):
            path = rng.choice(self.containers)
            try:
                target = _get(doc, path)
            except (KeyError, IndexError, TypeError):
                return doc, "skip"
            if not isinstance(target, (dict, list)) or not target:
                return doc, "skip"
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            key = rng.choice(keys)
            if kind == "delete":
                return _replace(doc, (*path, key), lambda v: _DELETE), kind
            if isinstance(target, list):
                other = rng.choice(keys)
                if kind == "duplicate":
                    return _replace(doc, path, lambda v: [*v[:key], v[other], *v[key:]]), kind
                return _replace(doc, path, lambda v: [v[other] if i == key else v[key] if i == other else x
                                                      for i, x in enumerate(v)]), kind
            return doc, "dupkey"  # a repeated key: done on the text (a dict cannot hold one)
        path = rng.choice(self.paths)
        if kind == "nest":
            depth = rng.choice((1, 2, 8, 63, 64, 65, 200))
            return _replace(doc, path, lambda v: _nest(v, depth)), kind
        if kind == "type":
            return _replace(doc, path, lambda v: rng.choice(_OTHER)), kind
        return _replace(doc, path, lambda v: _number(rng, v)), kind

    def blob_mutation(self, rng: random.Random, blob: bytes) -> tuple[bytes, str]:
        data = bytearray(blob)
        kind = rng.choice(("bytes", "index", "index", "truncate", "extend"))
        if kind == "truncate" and data:
            return bytes(data[:rng.randrange(len(data))]), kind
        if kind == "extend":
            return bytes(data + os.urandom(rng.choice((1, 4, 64, 4096)))), kind
        if kind == "index" and self.arrays:
            name, rec = rng.choice(self.arrays)
            if rec["dtype"] == "int32" and rec["shape"] and rec["shape"][0]:
                count = math.prod(rec["shape"])
                i = rng.randrange(count)
                if rec["offset"] + 4 * i + 4 > len(data):  # an earlier mutation truncated it
                    return bytes(data), "skip"
                value = rng.choice((-1, -(1 << 31), (1 << 31) - 1, 1 << 20, rng.randint(-1000, 1000), 0))
                struct.pack_into("<i", data, rec["offset"] + 4 * i, value)
                return bytes(data), kind
        for _ in range(rng.choice((1, 2, 8, 64))):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "bytes"

    def case(self, rng: random.Random) -> tuple[bytes, bytes | None, str]:
        """One mutated case: ``(json text, weights or None, what was done)``."""
        doc, blob, what = self.header, self.blob, []
        dupkey = False
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if blob is not None and rng.random() < 0.25:
                blob, kind = self.blob_mutation(rng, blob)
            else:
                try:
                    doc, kind = self.json_mutation(rng, doc)
                except (KeyError, IndexError, TypeError):  # an earlier mutation took the path away
                    kind = "skip"
                dupkey |= kind == "dupkey"
            what.append(kind)
        if blob is not None and blob is not self.blob and rng.random() < 0.9 and isinstance(doc, dict) \
                and isinstance(doc.get("weights"), dict):
            doc = {**doc, "weights": {**doc["weights"], "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
        text = json.dumps(doc, allow_nan=True)
        if dupkey:
            text = _repeat_key(rng, text)
        if rng.random() < 0.01:
            text = rng.choice(("[" * 100000 + "]" * 100000, text[:rng.randrange(max(1, len(text)))], text + "x"))
            what.append("text")
        return text.encode(), blob, "+".join(what)


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _nest(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def _repeat_key(rng: random.Random, text: str) -> str:
    """``text`` with one object's first key repeated, with another value, at the object's start."""
    starts = [i for i, c in enumerate(text) if c == "{" and text[i + 1:i + 2] == '"'] if len(text) < 200000 else []
    if not starts:
        return text
    i = rng.choice(starts)
    end = text.index('"', i + 2)
    key = text[i + 1:end + 1]
    return text[:i + 1] + f"{key}: {json.dumps(rng.choice(_INTERESTING))}, " + text[i + 1:]


# ------------------------------------------------------------------------------------------ worker
class Worker:
    """A process that builds and runs accepted plans natively; restarted after each crash."""

    def __init__(self, library: Path, asan: bool, timeout: float = 20.0) -> None:
        self.library, self.asan, self.timeout = library, asan, timeout
        self.proc: subprocess.Popen | None = None
        self.errlog = tempfile.TemporaryFile()

    def _start(self) -> None:
        env = dict(os.environ)
        if self.asan:
            env["LD_PRELOAD"] = ASAN_LIB
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
        self.errlog.seek(0)
        self.errlog.truncate()
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, lean.__file__, str(self.library)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errlog)
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the fuzz worker did not start: {self._stderr()}")

    def _stderr(self) -> str:
        self.errlog.seek(0)
        return self.errlog.read().decode(errors="replace")[-4000:]

    def run(self, text: bytes, blob: bytes) -> tuple[str, str]:
        """``("ok" | "refused" | "error" | "crash" | "hang", detail)`` of one accepted plan."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        import select

        try:
            self.proc.stdin.write(struct.pack("<II", len(text), len(blob)) + text + blob)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
            line = self.proc.stdout.readline() if ready else None
        except (BrokenPipeError, OSError):
            line = b""
        if line is None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return "hang", f"no answer in {self.timeout:g} s"
        if not line:
            code = self.proc.wait()
            self.proc = None
            return "crash", f"exit {code}: {self._stderr()}"
        status = {b"0\n": "ok", b"R\n": "refused", b"E\n": "error"}.get(line, "crash")
        return status, line.decode(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.proc = None


# -------------------------------------------------------------------------------------------- fuzz
def _verdict(header: Any, arrays: Any, quick: bool) -> str | None:
    try:
        lean.verify_plan(header, arrays, quick=quick)
    except lean.LeanError as exc:
        return str(exc)
    return None


def check_plan(text: bytes, blob: bytes) -> bool:
    """True when the reader and verifier accept the case; False for a LeanError; anything else propagates. The
    verifier's quick path and its step-by-step checks must agree (the same error, or both accept): an op the
    quick path passed that the steps refuse is an AssertionError."""
    try:
        header, arrays = lean.parse_plan(text, blob)
    except lean.LeanError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"a LeanError of several lines: {exc!r}") from None
        return False
    quick, steps = _verdict(header, arrays, True), _verdict(header, arrays, False)
    if quick != steps:
        raise AssertionError(f"the verifier's quick path says {quick!r}, its step-by-step checks {steps!r}")
    if quick is not None and "\n" in quick:
        raise AssertionError(f"a LeanError of several lines: {quick!r}")
    return quick is None


def check_policy(text: bytes, folder: Path) -> bool:
    """True when Policy.load accepts the case; False for a PolicyError; anything else propagates."""
    from uniprune.compressors.core.errors import PolicyError
    from uniprune.compressors.core.policy import Policy

    path = folder / "policy.json"
    path.write_bytes(text)
    try:
        Policy.load(path)
    except PolicyError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"a PolicyError of several lines: {str(exc)[:300]!r}") from None
        return False
    return True


def fuzz(seconds: float, cases: int, library: Path, *, asan: bool = False, seed: int = 0,
         findings_dir: Path | None = None, progress: Callable[[Counter], None] | None = None,
         seeds: list[tuple[dict[str, Any], bytes]] | None = None) -> Counter:
    """Mutate and check cases until ``cases`` are tried or ``seconds`` pass; returns the counts: ``tried``,
    ``rejected`` (by the reader or verifier), ``run`` (natively; ``refused`` of them by the native checks,
    ``failed`` with a nonzero code), ``policies``, ``findings``. ``seeds``: the plans to mutate (default
    :func:`seed_plans`)."""
    rng = random.Random(seed)
    mutators = [Mutator(h, b) for h, b in (seeds or seed_plans())]
    policy = Mutator(seed_policy(), None)
    counts: Counter = Counter()
    worker = Worker(library, asan)
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory(prefix="uniprune-fuzz-") as folder:
        try:
            while counts["tried"] < cases and time.monotonic() < deadline:
                counts["tried"] += 1
                if progress and counts["tried"] % 20000 == 0:
                    progress(counts)
                if counts["tried"] % 10 == 0:  # one case in ten is a policy file
                    text, _, what = policy.case(rng)
                    counts["policies"] += 1
                    try:
                        check_policy(text, Path(folder))
                    except Exception as exc:  # noqa: BLE001 - a traceback is what the fuzzer looks for
                        _finding(counts, findings_dir, "policy", what, text, None, _trace(exc))
                    continue
                m = rng.choice(mutators)
                text, blob, what = m.case(rng)
                try:
                    accepted = check_plan(text, blob)
                except Exception as exc:  # noqa: BLE001
                    _finding(counts, findings_dir, "verifier", what, text, blob, _trace(exc))
                    continue
                if not accepted:
                    counts["rejected"] += 1
                    continue
                counts["run"] += 1
                status, detail = worker.run(text, blob)
                if status in ("crash", "hang"):
                    _finding(counts, findings_dir, status, what, text, blob, detail)
                counts[{"ok": "ran_ok", "refused": "refused", "error": "failed"}.get(status, "run_findings")] += 1

        finally:
            worker.close()
    return counts


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]


def _finding(counts: Counter, folder: Path | None, kind: str, what: str, text: bytes, blob: bytes | None,
             detail: str) -> None:
    counts["findings"] += 1
    counts[f"findings_{kind}"] += 1
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        case = folder / f"{kind}-{counts['findings']:04d}"
        case.mkdir(exist_ok=True)
        (case / "plan.json").write_bytes(text)
        if blob is not None:
            (case / "weights.bin").write_bytes(blob)
        (case / "detail.txt").write_text(f"{what}\n{detail}\n")
    else:
        raise AssertionError(f"fuzz finding ({kind}, mutations {what}): {detail[-2000:]}")


def build_library(asan: bool) -> Path:
    """The installed kernels' library: the normal build, or with ``asan`` the AddressSanitizer one."""
    from uniprune.compressors.native import kernels

    if asan:
        os.environ["UNIPRUNE_SANITIZE"] = "address"
    try:
        return kernels.build()
    finally:
        os.environ.pop("UNIPRUNE_SANITIZE", None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1_000_000, help="mutated cases to try (default 1,000,000)")
    p.add_argument("--deadline", default=None, help="stop at this UTC time HH:MM, whatever the count")
    p.add_argument("--asan", action="store_true", help="run the native path on the AddressSanitizer build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--findings", default="runs/fuzz-findings", help="where failing cases are saved")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/RESULTS.md alone")
    p.add_argument("--counts-out", default=None, help="also write the counts (and seconds) to this JSON file")
    p.add_argument("--combine", nargs="+", default=None,
                   help="write the section from the --counts-out files of several shards (run side by side, other seeds)")
    p.add_argument("--shard-command", default="", help="with --combine: the command each shard ran, for the record")
    args = p.parse_args(argv)
    if args.combine:
        counts, elapsed = Counter(), 0.0
        for path in args.combine:
            record = json.loads(Path(path).read_text())
            elapsed = max(elapsed, record.pop("seconds"))
            counts.update(record)
        how = f"{len(args.combine)} shards side by side (seeds differ), combined"
        _write(counts, elapsed, args.asan, how + (f"; each shard: `{args.shard_command}`" if args.shard_command else ""))
        return 1 if counts["findings"] else 0
    seconds = float("inf")
    if args.deadline:
        now = _dt.datetime.now(_dt.timezone.utc)
        hh, mm = (int(s) for s in args.deadline.split(":"))
        end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        seconds = (end - now).total_seconds()
    library = build_library(args.asan)
    started = time.monotonic()
    counts = fuzz(seconds, args.cases, library, asan=args.asan, seed=args.seed, findings_dir=Path(args.findings),
                  progress=lambda c: print(f"fuzz: {dict(c)} after {time.monotonic() - started:.0f} s", file=sys.stderr,
                                           flush=True))
    elapsed = time.monotonic() - started
    print(json.dumps(dict(counts)))
    if args.counts_out:
        Path(args.counts_out).write_text(json.dumps({**counts, "seconds": elapsed}))
    if not args.no_write:
        _write(counts, elapsed, args.asan, "one process")
    return 1 if counts["findings"] else 0


def _write(counts: Counter, elapsed: float, asan: bool, how: str) -> None:
    from results_md import command_line, machine_line, write_section

    plans = counts["tried"] - counts["policies"]
    lines = [
        "## Plan fuzzer (issue 21)",
        "",
        f"Command: `{command_line()}`",
        f"Machine: {machine_line()}; run at nice 19 beside other jobs; {how}; {elapsed / 60:.0f} min",
        "",
        f"Native path: the kernels' {'AddressSanitizer build (UNIPRUNE_SANITIZE=address, LD_PRELOAD ' + ASAN_LIB + ')' if asan else 'normal build'}.",
        "",
        "| cases | count |",
        "| --- | --- |",
        f"| tried (mutated plans + policies) | {counts['tried']:,} |",
        f"| mutated plans | {plans:,} |",
        f"| rejected by the reader or verifier (one-line LeanError) | {counts['rejected']:,} |",
        f"| accepted and run natively (batch 1 and 3) | {counts['run']:,} |",
        f"| of those refused by the native checks | {counts['refused']:,} |",
        f"| of those returning an error code | {counts['failed']:,} |",
        f"| mutated policy files | {counts['policies']:,} |",
        f"| findings (crash, sanitizer report, hang, traceback) | {counts['findings']:,} |",
        "",
        f"Target: at least 1,000,000 mutated plans under AddressSanitizer with 0 findings: "
        f"{'met' if plans >= 1_000_000 and not counts['findings'] and asan else 'not met'}.",
    ]
    write_section("fuzz_plan", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
