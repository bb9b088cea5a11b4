"""oneDNN's dense convolutions beside uniprune's own kernels on ResNet-56's conv shapes (issue 20, item 4).

    python benchmarks/onednn_probe.py                        # every oneDNN found; batch 1 and 32; fp32 and bf16
    python benchmarks/onednn_probe.py --dnnl /usr --batches 32 --precisions bf16

oneDNN is not a dependency of uniprune (docs/KERNELS.md says why); install one or both to run this:
- Debian's ``apt-get install libdnnl-dev`` (oneDNN 2.x, OpenMP runtime; found under /usr);
- PyPI's 3.x, a SYCL build whose CPU engine is an OpenCL CPU device, with the runtimes it loads (what was measured):
  ``pip install --no-deps onednn onednn-devel tbb intel-cmplr-lib-rt intel-sycl-rt intel-opencl-rt`` (found under
  the venv's prefix; this script puts its lib folder on LD_LIBRARY_PATH and names the OpenCL CPU driver itself).

Question: should the layers a policy leaves dense run on oneDNN (AMX and avx512_bf16 convolutions) rather than on
our kernels? For each dense conv shape of the CIFAR ResNets (3x3, stride 1 and 2, no bias) at each batch, one
process times, interleaved in the same rounds (uniprune.compressors.latency.timing, the least of the rounds):
- ``ours``: the native conv a plan runs for a dense layer (``SparseConv`` with every block kept; bf16: AMX tiles
  where the CPU has them), float32 NCHW in and out, its one C entry point called through ctypes on buffers
  allocated once (no Python allocation in the timed call);
- for each oneDNN install: a shim (benchmarks/onednn_probe.c, compiled here against that install's headers)
  holding one convolution primitive created with format_tag ``any`` (oneDNN picks its blocked layout and kernel;
  bf16: bf16 source and weights, float32 destination), its weights reordered once; timed apart: ``conv`` (the
  primitive alone, as if the whole network stayed in oneDNN's layout), ``in`` (float32 NCHW -> the conv's source
  layout and type), ``out`` (the conv's destination -> float32 NCHW), and ``all`` (the three in one call: what a
  plan with float32 NCHW activations would pay for the layer).
Outputs are checked against torch's conv (fp32: relative 1e-4; bf16: against torch on bf16-rounded operands,
relative 1e-2 of the output's scale) before timing. One core: OMP_NUM_THREADS=1, the process pinned to one CPU
(oneDNN's OpenMP and TBB runtimes both honour it), 1 thread for torch and our kernels. With OpenVINO installed, the
whole dense ResNet-56 runs at its default precision and at f32 in the same process, with its own per-layer
profile (PERF_COUNT) summed per conv shape. Writes section ``onednn_probe`` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "onednn_probe.c"
# (in, out, map, stride) and how many convs of that shape ResNet-20 / ResNet-56 hold (option-A shortcuts: no 1x1)
SHAPES = [(3, 16, 32, 1), (16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]
COUNTS = {"resnet20": [1, 6, 1, 5, 1, 5], "resnet56": [1, 18, 1, 17, 1, 17]}
SYSTEM = Path("/usr")


def _lib_dir(prefix: Path) -> Path:
    if prefix == SYSTEM:
        return Path("/usr/lib/x86_64-linux-gnu")
    return prefix / "lib"


def find_installs(asked: list[str] | None) -> list[Path]:
    """The oneDNN installs to probe: each a prefix with ``include/oneapi/dnnl/dnnl.h`` and a ``libdnnl.so``
    (Debian's libdnnl-dev under /usr; the PyPI wheels ``onednn`` + ``onednn-devel`` under the venv's prefix)."""
    candidates = [Path(p).resolve() for p in asked] if asked else [SYSTEM, Path(sys.prefix).resolve()]
    found = [p for p in candidates if (p / "include/oneapi/dnnl/dnnl.h").is_file() and (_lib_dir(p) / "libdnnl.so").exists()]
    missing = [str(p) for p in candidates if p not in found]
    if asked and missing:
        raise SystemExit(f"no oneDNN (include/oneapi/dnnl/dnnl.h and libdnnl.so) under {', '.join(missing)}")
    return found


def one_core_environment(installs: list[Path]) -> None:
    """Re-run this script once with the environment every library reads at load time: one OpenMP thread, the
    non-system installs' lib folders on LD_LIBRARY_PATH (the PyPI libdnnl has no RUNPATH for its TBB, SYCL and
    compiler runtimes), the Intel OpenCL CPU runtime named as the ICD (the PyPI build's CPU engine is a SYCL
    device), and the process pinned to one CPU."""
    if os.environ.get("_UNIPRUNE_ONEDNN_PROBE") == "1":
        return
    env = dict(os.environ, _UNIPRUNE_ONEDNN_PROBE="1", OMP_NUM_THREADS="1")
    libs = [str(_lib_dir(p)) for p in installs if p != SYSTEM]
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        ocl = [Path(d) / "libintelocl.so" for d in libs if (Path(d) / "libintelocl.so").exists()]
        if ocl:
            env.setdefault("OCL_ICD_FILENAMES", str(ocl[0]))
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


@dataclass
class Dnnl:
    """One oneDNN install, through the probe's shim compiled against it."""

    prefix: Path
    lib: ctypes.CDLL
    version: str
    runtime: str
    isa: int

    @classmethod
    def build(cls, prefix: Path, out: Path) -> Dnnl:
        so = out / f"onednn_probe_{abs(hash(str(prefix)))}.so"
        libdir = _lib_dir(prefix)
        cmd = ["gcc", "-O2", "-shared", "-fPIC", f"-I{prefix / 'include'}", str(SHIM), "-o", str(so), f"-L{libdir}",
               f"-Wl,-rpath,{libdir}", f"-Wl,-rpath-link,{libdir}", "-ldnnl"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        lib = ctypes.CDLL(str(so))
        lib.pr_create.argtypes = [ctypes.c_int] * 10 + [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        for name in ("pr_conv", "pr_reorder_in", "pr_reorder_out", "pr_all"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.pr_set_input.argtypes = lib.pr_get_output.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.pr_impl.argtypes, lib.pr_impl.restype = [ctypes.c_void_p], ctypes.c_char_p
        lib.pr_layout.argtypes, lib.pr_layout.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_char_p
        lib.pr_destroy.argtypes = [ctypes.c_void_p]
        runtime, isa = ctypes.c_uint(), ctypes.c_int()
        v = lib.pr_version(ctypes.byref(runtime), ctypes.byref(isa))
        names = {1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool", 512: "SYCL"}
        return cls(prefix, lib, f"{v // 10000}.{v // 100 % 100}.{v % 100}", names.get(runtime.value, str(runtime.value)),
                   isa.value)

    @property
    def name(self) -> str:
        return f"oneDNN {self.version}"


class DnnlConv:
    """One oneDNN convolution primitive on fixed buffers (see onednn_probe.c)."""

    def __init__(self, dnnl: Dnnl, bf16: bool, x, weight, stride: int, plain: bool = False) -> None:
        n, ci, h, w = x.shape
        co, _, k, _ = weight.shape
        self.lib, self.handle = dnnl.lib, ctypes.c_void_p()
        w32 = weight.float().contiguous()
        rc = self.lib.pr_create(int(bf16), int(plain), n, ci, co, h, w, k, stride, k // 2, w32.data_ptr(), ctypes.byref(self.handle))
        if rc:
            raise RuntimeError(f"{dnnl.name}: convolution {ci}->{co} @{h}x{w} could not be created (dnnl status {rc})")
        self.impl = (f"{self.lib.pr_impl(self.handle).decode()} ({self.lib.pr_layout(self.handle, 0).decode()} -> "
                     f"{self.lib.pr_layout(self.handle, 1).decode()})")
        xc = x.float().contiguous()
        if self.lib.pr_set_input(self.handle, xc.data_ptr(), xc.numel()):
            raise RuntimeError("pr_set_input refused the input")
        self.out_shape = (n, co, (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1)

    def output(self):
        import torch

        if self.lib.pr_all(self.handle):
            raise RuntimeError("the oneDNN convolution failed")
        y = torch.empty(self.out_shape)
        self.lib.pr_get_output(self.handle, y.data_ptr(), y.numel())
        return y

    def fns(self, tag: str) -> dict:
        h, lib = self.handle, self.lib
        return {f"{tag} conv": lambda: lib.pr_conv(h), f"{tag} in": lambda: lib.pr_reorder_in(h),
                f"{tag} out": lambda: lib.pr_reorder_out(h), f"{tag} all": lambda: lib.pr_all(h)}

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.pr_destroy(self.handle)
            self.handle = None


def ours(weight, x, stride: int, precision: str):
    """Our dense conv on fixed buffers: (timed call, output, engine)."""
    import torch
    from uniprune.compressors.native import kernels

    keep = torch.ones(weight.shape[0], weight.shape[1], dtype=torch.bool)
    conv = kernels.SparseConv(weight, keep, None, (stride, stride), (1, 1), (1, 1), precision=precision)
    xc = x.contiguous()
    y = conv(xc, 1)
    run, plan, n, h, w = conv._run, conv._plan, xc.shape[0], xc.shape[2], xc.shape[3]
    xp, yp = xc.data_ptr(), y.data_ptr()
    return (lambda: run(plan, xp, yp, n, h, w, 1)), (lambda: (run(plan, xp, yp, n, h, w, 1), y)[1]), conv.engine, conv


def rel_err(y, ref) -> float:
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def layer_rows(installs: list[Dnnl], batches: list[int], precisions: list[str], repeats: int) -> tuple[list[dict], dict]:
    import torch
    from tqdm import tqdm
    from uniprune.compressors.latency.timing import time_interleaved

    rows, impls = [], {}
    cases = [(s, b, p) for p in precisions for b in batches for s in SHAPES]
    for (ci, co, hw, stride), batch, precision in tqdm(cases, desc="oneDNN probe", file=sys.stderr):
        g = torch.Generator().manual_seed(ci * 100 + co)
        weight = torch.randn(co, ci, 3, 3, generator=g) * (2.0 / (9 * ci)) ** 0.5
        x = torch.randn(batch, ci, hw, hw, generator=g)
        bf16 = precision == "bf16"
        ref_w, ref_x = (weight.bfloat16().float(), x.bfloat16().float()) if bf16 else (weight, x)
        ref = torch.nn.functional.conv2d(ref_x.double(), ref_w.double(), None, stride, 1).float()
        tol = 1e-2 if bf16 else 1e-4
        timed, out, engine, _keep = ours(weight, x, stride, precision)
        fns = {"ours": timed}
        errs = {"ours": rel_err(out(), ref)}
        convs = []
        for d in installs:
            c = DnnlConv(d, bf16, x, weight, stride)
            errs[d.name] = rel_err(c.output(), ref)
            impls.setdefault((d.name, precision), set()).add(c.impl)
            fns.update(c.fns(d.name))
            pinned = DnnlConv(d, bf16, x, weight, stride, plain=True)
            errs[f"{d.name} NCHW"] = rel_err(pinned.output(), ref)
            impls.setdefault((f"{d.name} NCHW-pinned", precision), set()).add(pinned.impl)
            fns[f"{d.name} nchw all"] = pinned.fns(d.name)[f"{d.name} all"]
            convs += [c, pinned]
        bad = {k: e for k, e in errs.items() if not e <= tol}
        if bad:
            raise SystemExit(f"{precision} conv {ci}->{co} @{hw}: output off torch's by {bad} (limit {tol})")
        t = time_interleaved(fns, warmup=5, repeats=repeats, threads=1, statistic="min")
        ho = (hw - 1) // stride + 1
        flops = 2.0 * co * ci * 9 * ho * ho * batch
        rows.append({"shape": (ci, co, hw, stride), "batch": batch, "precision": precision, "engine": engine,
                     "flops": flops, "t": t, "errs": errs})
        del convs
    return rows, impls


def _resnet56():
    from uniprune.search.models import build_model, load_weights

    model = build_model("cifar-resnet56", num_classes=10)
    ckpt = HERE.parents[1] / "shared" / "data" / "pretrained" / "resnet56-4bfd9763.th"
    if ckpt.exists():
        load_weights(model, ckpt)
    return model.eval()


def conv_shapes(model) -> dict[str, tuple[int, int, int, int]]:
    """``{module name: (in, out, input map side, stride)}`` of every conv, from one forward pass at 32x32."""
    import torch

    shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, _out, name=name: shapes.__setitem__(
                    name, (mod.in_channels, mod.out_channels, inp[0].shape[-1], mod.stride[0]))))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return shapes


def _node_conv(shapes: dict, node_name: str) -> tuple[int, int, int, int] | None:
    """The conv shape an OpenVINO node runs (its name keeps the ONNX exporter's module path, e.g.
    ``/layer1/layer1.0/conv1/Conv/WithoutBiases``), or None for any other node."""
    parts = [p for p in node_name.split("/") if p]
    if "Conv" not in parts or parts.index("Conv") < 1:
        return None
    i = parts.index("Conv")  # the parts before: the parent's full name, then the conv's own
    return shapes.get(parts[i - 1] if i == 1 else f"{parts[i - 2]}.{parts[i - 1]}")


def whole_models(batches: list[int], repeats: int) -> dict | None:
    """The dense ResNet-56 whole: OpenVINO at its default precision and at f32 (BatchNorm folded, one ONNX file),
    and our artifact in fp32 and bf16 (nothing pruned), interleaved per batch; and OpenVINO's own per-node profile
    (PERF_COUNT, the least over the rounds) at its default precision, summed per conv shape. None without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return None
    import torch
    from uniprune.compressors.core.blocks import compressible_layers
    from uniprune.compressors.latency.engines import _export_onnx, dense_engines
    from uniprune.compressors.latency.table import compile_for_timing, random_structure
    from uniprune.compressors.latency.timing import time_interleaved
    from uniprune.compressors.native.runtime import inference_copy

    model = _resnet56()
    out = {}
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        dense = dense_engines(model, x, threads=1, engines=["openvino", "openvino:f32"])
        fns = {f"OpenVINO {dense.precisions[m]}": r for m, r in dense.runners.items()}
        gen = torch.Generator().manual_seed(0)
        structures = {s.name: random_structure(s.grid, 0.0, 0.0, gen) for s in compressible_layers(model)}
        for precision in ("fp32", "bf16"):
            compiled, _, _ = compile_for_timing(model, structures, x, 1, "artifact", precision)
            fns[f"uniprune artifact {precision}"] = lambda c=compiled, x=x: c(x)
        times = time_interleaved(fns, warmup=3, repeats=repeats, threads=1, statistic="min")
        with tempfile.TemporaryDirectory(prefix="uniprune-ov-") as tmp:
            path = Path(tmp) / "dense.onnx"
            _export_onnx(inference_copy(model).float(), x, path)
            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                                  "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
            request = compiled.create_infer_request()
            data = x.numpy()
            best: dict[str, float] = {}
            for _ in range(max(5, repeats // 2)):
                request.infer({0: data})
                for info in request.get_profiling_info():
                    ms = info.real_time.total_seconds() * 1e3
                    best[info.node_name] = min(best.get(info.node_name, ms), ms)
        per_shape: dict[tuple, float] = {}
        shapes = conv_shapes(model)
        for name, ms in best.items():
            shape = _node_conv(shapes, name)
            if shape is not None:
                per_shape[shape] = per_shape.get(shape, 0.0) + ms
        out[batch] = {"times": times, "ov_per_shape": per_shape, "ov_profiled_sum": sum(best.values())}
    return out


def _us(t: float) -> str:
    return f"{t * 1e3:.1f}"


def layer_table(rows: list[dict], installs: list[Dnnl], ov: dict | None) -> list[str]:
    """The per-layer table: our conv, each oneDNN's conv alone, its reorders and all three, their rates and the
    ratio ours / theirs (above 1: oneDNN faster), and OpenVINO's own per-conv time where profiled."""
    head = "| conv (in->out @map) | batch | precision | ours µs (engine) | ours GFLOP/s |"
    for d in installs:
        head += (f" {d.name} conv µs | GFLOP/s | in µs | out µs | in+conv+out µs | ours / conv | ours / in+conv+out "
                 "| NCHW-pinned µs | ours / NCHW-pinned |")
    head += " OpenVINO per conv µs (its profile, default bf16) |" if ov else ""
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    counts = dict(zip(SHAPES, COUNTS["resnet56"]))
    for r in rows:
        ci, co, hw, stride = r["shape"]
        t = r["t"]
        cells = [f"{ci}->{co} @{hw}x{hw}{' s2' if stride == 2 else ''}", str(r["batch"]), r["precision"],
                 f"{_us(t['ours'])} ({r['engine']})", f"{r['flops'] / (t['ours'] * 1e6):.0f}"]
        for d in installs:
            c, a = t[f"{d.name} conv"], t[f"{d.name} all"]
            pa = t[f"{d.name} nchw all"]
            cells += [_us(c), f"{r['flops'] / (c * 1e6):.0f}", _us(t[f"{d.name} in"]), _us(t[f"{d.name} out"]), _us(a),
                      f"{t['ours'] / c:.2f}", f"{t['ours'] / a:.2f}", _us(pa), f"{t['ours'] / pa:.2f}"]
        if ov:
            per = ov.get(r["batch"], {}).get("ov_per_shape", {}).get(r["shape"])
            cells.append(f"{per / counts[r['shape']] * 1e3:.1f}" if per is not None and r["precision"] == "bf16" else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def model_sums(rows: list[dict], installs: list[Dnnl], ov: dict | None) -> list[str]:
    """The per-layer times summed over each ResNet's convs (its count of each shape), per precision and batch,
    beside the whole dense models where measured."""
    head = "| model | batch | precision | ours Σ ms |"
    for d in installs:
        head += f" {d.name} conv Σ ms | {d.name} in+conv+out Σ ms | best of ours and {d.name} in+conv+out, per layer, Σ ms |"
    head += " whole model: OpenVINO ms | whole model: our artifact ms |" if ov else ""
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    keys = sorted({(r["batch"], r["precision"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for model, counts in COUNTS.items():
        weight = dict(zip(SHAPES, counts))
        for batch, precision in keys:
            rs = [r for r in rows if r["batch"] == batch and r["precision"] == precision]
            if {r["shape"] for r in rs} != set(SHAPES):
                continue

            def total(key, rs=rs, weight=weight):
                return sum(weight[r["shape"]] * key(r["t"]) for r in rs)

            cells = [model, str(batch), precision, f"{total(lambda t: t['ours']):.2f}"]
            for d in installs:
                cells += [f"{total(lambda t, n=d.name: t[f'{n} conv']):.2f}", f"{total(lambda t, n=d.name: t[f'{n} all']):.2f}",
                          f"{total(lambda t, n=d.name: min(t['ours'], t[f'{n} all'])):.2f}"]
            if ov:
                times = ov.get(batch, {}).get("times", {}) if model == "resnet56" else {}
                ovt = times.get("OpenVINO bf16" if precision == "bf16" else "OpenVINO f32")
                art = times.get(f"uniprune artifact {precision}")
                cells += [f"{ovt:.2f}" if ovt else "", f"{art:.2f}" if art else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def reading(rows: list[dict], installs: list[Dnnl]) -> list[str]:
    """One line per install: ResNet-56's convs, our sum over oneDNN's as a plan would call it (reorders in and out),
    per layer the faster of the two, and the conv alone (activations kept in oneDNN's layout)."""
    weight = dict(zip(SHAPES, COUNTS["resnet56"]))
    lines = []
    for d in installs:
        parts = []
        for precision in ("bf16", "fp32"):
            for batch in sorted({r["batch"] for r in rows}):
                rs = [r for r in rows if r["batch"] == batch and r["precision"] == precision]
                if {r["shape"] for r in rs} != set(SHAPES):
                    continue
                ours_ms = sum(weight[r["shape"]] * r["t"]["ours"] for r in rs)
                drop = sum(weight[r["shape"]] * r["t"][f"{d.name} all"] for r in rs)
                best = sum(weight[r["shape"]] * min(r["t"]["ours"], r["t"][f"{d.name} all"]) for r in rs)
                alone = sum(weight[r["shape"]] * r["t"][f"{d.name} conv"] for r in rs)
                parts.append(f"{precision} batch {batch}: {ours_ms / drop:.2f}x as a drop-in, {ours_ms / best:.2f}x "
                             f"taking the faster per layer, {ours_ms / alone:.2f}x for the conv alone")
        lines.append(f"Reading, {d.name} against ours on ResNet-56's convs (above 1: oneDNN faster): " + "; ".join(parts)
                     + ". Whether oneDNN is used for layers left dense, and why: docs/KERNELS.md.")
    return lines


def _origin(prefix: Path) -> str:
    if prefix == SYSTEM:
        return "/usr, Debian's libdnnl-dev"
    if prefix == Path(sys.prefix).resolve():
        return "this venv, PyPI's onednn + onednn-devel"
    return str(prefix)


def write_results(rows: list[dict], installs: list[Dnnl], impls: dict, ov: dict | None, loads: tuple) -> None:
    sys.path.insert(0, str(HERE))
    from results_md import command_line, machine_line, write_section
    from uniprune.compressors.latency.engines import engine_versions

    libs = "; ".join(f"**{d.name}** ({d.runtime} CPU runtime, from {_origin(d.prefix)}, effective ISA code {d.isa:#x})"
                     for d in installs)
    chose = "; ".join(f"{name} {prec}: {', '.join(sorted(v))}" for (name, prec), v in sorted(impls.items()))
    md = [
        f"Machine: {machine_line()}; load average {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} at the end (a shared 2-core machine); the process pinned to one CPU, 1 thread everywhere.",
        f"Libraries: {libs}; OpenVINO {engine_versions().get('openvino', 'absent')}.",
        f"Command: `{'DNNL_MAX_CPU_ISA=' + os.environ['DNNL_MAX_CPU_ISA'] + ' ' if os.environ.get('DNNL_MAX_CPU_ISA') else ''}"
        f"{command_line()}`",
        "",
        "µs = the least of interleaved rounds in one process (every column of a row in the same rounds). **ours**: "
        "the native conv a plan runs for a layer left dense (`SparseConv`, every block kept; bf16 on AMX tiles), "
        "float32 NCHW in and out, its C entry point called through ctypes on fixed buffers. **oneDNN**: one "
        "convolution primitive (benchmarks/onednn_probe.c) created with format_tag any (oneDNN's own blocked "
        "layout and kernel; bf16: bf16 source and weights, float32 destination), weights reordered once, untimed; "
        "**conv** = the primitive alone (activations already in its layout, as if the whole network stayed in "
        "oneDNN), **in** = float32 NCHW -> its source layout (and bf16), **out** = its destination -> float32 NCHW, "
        "**in+conv+out** = the three in one call, what a plan with float32 NCHW activations would pay for the "
        "layer. **NCHW-pinned**: a second primitive with source and destination pinned to NCHW, the plan's own "
        "layout (in+conv+out, the reorders reduced to the bf16 rounding in and nothing out; in fp32 no reorder "
        "at all). GFLOP/s = 2 x MACs / time. ours / X = our time over X's (above 1: oneDNN faster). Outputs checked "
        "against torch first (fp32 within 1e-4 relative, bf16 within 1e-2 of torch on bf16-rounded operands). "
        "OpenVINO per conv: its PERF_COUNT profile of the dense ResNet-56 at its default precision (bf16 here; "
        "least over the rounds, the node's fused bias/ReLU/add included, activations kept in NHWC bf16), summed "
        "per shape and divided by the count of that shape.",
        f"Implementations oneDNN chose (source -> destination layout): {chose}.",
        "",
        *layer_table(rows, installs, ov),
        "",
        "Summed over each model's convs (ResNet-20: 1 stem, 6/5/5 stage convs and a stride-2 conv at each of the "
        "two stage changes; ResNet-56: 1, 18/17/17 and 2), beside the whole dense ResNet-56 (BatchNorm folded; "
        "OpenVINO at bf16 for the bf16 rows and pinned to f32 for the fp32 rows; our artifact with nothing "
        "pruned, `uniprune export`'s plan in that precision), timed interleaved in a second set of rounds:",
        "",
        *model_sums(rows, installs, ov),
        "",
        *reading(rows, installs),
    ]
    # a run with the ISAs capped (UNIPRUNE_ISA for ours, DNNL_MAX_CPU_ISA for oneDNN) keeps its own section
    capped = "_".join(v.lower() for v in (os.environ.get("UNIPRUNE_ISA"), os.environ.get("DNNL_MAX_CPU_ISA")) if v)
    title = "## oneDNN for layers left dense (issue 20, item 4)" + (f", ISAs capped ({capped})" if capped else "")
    write_section("onednn_probe" + (f"_{capped}" if capped else ""), title + "\n\n" + "\n".join(md))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dnnl", nargs="+", default=None,
                        help="install prefixes to probe (default: /usr and this venv, each where it has oneDNN)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per layer (default 30)")
    parser.add_argument("--no-openvino", action="store_true", help="leave out the whole ResNet-56 on OpenVINO")
    args = parser.parse_args(argv)
    prefixes = find_installs(args.dnnl)
    if not prefixes:
        raise SystemExit("no oneDNN found: apt-get install libdnnl-dev, or pip install onednn onednn-devel")
    one_core_environment(prefixes)
    import torch

    torch.set_num_threads(1)
    start_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="uniprune-onednn-") as tmp:
        installs = [Dnnl.build(p, Path(tmp)) for p in prefixes]
        rows, impls = layer_rows(installs, args.batches, args.precisions, args.repeats)
        ov = None if args.no_openvino else whole_models(args.batches, args.repeats)
    for r in rows:
        print(r["shape"], r["batch"], r["precision"], r["engine"], {k: round(v * 1e3, 1) for k, v in r["t"].items()},
              file=sys.stderr)
    write_results(rows, installs, impls, ov, (start_load, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
