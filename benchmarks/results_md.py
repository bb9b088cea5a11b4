"""Write one benchmark's section of docs/RESULTS.md, leaving the other sections as they are.

Each section sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; a benchmark replaces only
its own, so several benchmarks share the file without clobbering each other.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"
_HEADER = "# Results\n\nEvery figure here was measured by the command shown with it. Sections are written by the scripts in `benchmarks/`.\n"


#: The CPU flags every figure is read against: the vector units the kernels and the engines can use.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16")


def machine_line() -> str:
    """One line naming the machine: CPU model, its vector unit, the ISA the kernels were built for, cores, its
    :data:`VECTOR_FLAGS`, torch version, date (UTC). The same CPU name has come with AVX2 only, with AVX-512 and
    with AMX."""
    import torch
    from uniprune.compressors.native.kernels import cpu_flags, isa

    cpu = platform.processor() or platform.machine()
    family = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in (platform.processor(), platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("cpu family") and not family:
                # "AMD EPYC" has been Zen 4 (family 25: AVX-512 on 256-bit units) and Zen 5 (26: full width)
                family = f" family {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    flags = cpu_flags()
    unit = "AVX-512" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else platform.machine()
    listed = " ".join(f for f in VECTOR_FLAGS if f in flags) or "none of " + " ".join(VECTOR_FLAGS)
    return (f"{cpu}{family} ({unit}; kernels built for {isa()}), {os.cpu_count()} cores, CPU flags {listed}, "
            f"torch {torch.__version__}, {today}")


def command_line() -> str:
    """The command that is running, as a person would type it from the repository root (with the kernel ISA
    it forced, when ``UNIPRUNE_ISA`` is set)."""
    forced = f"UNIPRUNE_ISA={os.environ['UNIPRUNE_ISA']} " if os.environ.get("UNIPRUNE_ISA") else ""
    return forced + "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_section(name: str, markdown: str, path: Path = RESULTS) -> Path:
    """Replace (or append) section ``name`` of docs/RESULTS.md with ``markdown``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
