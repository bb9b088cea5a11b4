"""uniprune's native block-sparse CPU kernels, as one module: the library and its build (:mod:`.library`) and the
layers on it (:mod:`.sparse`). See those modules and docs/KERNELS.md.

``python -m uniprune.compressors.native.kernels --build [--isa ...] [--force]`` compiles the library now.
"""

from __future__ import annotations

import sys

from .library import (
    CONV_LAYOUTS,
    ISAS,
    PEAK_UNITS,
    SOURCE,
    SOURCES,
    bf16_units,
    build,
    build_id,
    cache_dir,
    fma_peak_gflops,
    force_amx_split,
    force_conv_layout,
    isa,
    load,
    main,
    peak_gflops,
    resolve_isa,
    source_hash,
)
from .sparse import (
    PANEL_HEIGHTS,
    PRECISIONS,
    ROWS,
    PackedPanels,
    SparseConv,
    SparseGemv,
    bf16_bits,
    depthwise_conv2d,
    pack_panels,
    panel_height,
)
from .uniprune_lean.build import cpu_flags

__all__ = ["CONV_LAYOUTS", "ISAS", "PANEL_HEIGHTS", "PEAK_UNITS", "PRECISIONS", "ROWS", "SOURCE", "SOURCES",
           "PackedPanels", "SparseConv", "SparseGemv", "bf16_bits", "bf16_units", "build", "build_id", "cache_dir",
           "cpu_flags", "depthwise_conv2d", "fma_peak_gflops", "force_amx_split", "force_conv_layout", "isa", "load", "main",
           "pack_panels", "panel_height", "peak_gflops", "resolve_isa", "source_hash"]

if __name__ == "__main__":
    sys.exit(main())
