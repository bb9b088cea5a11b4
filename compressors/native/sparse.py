"""The block-sparse layers on the native library: weights packed per panel (:func:`pack_panels`), the conv
(:class:`SparseConv`), the linear (:class:`SparseGemv`) and the depthwise conv.

Conv weights are packed per panel of 1, 2, 4 or 8 output channels (the layer's block height, see
:func:`panel_height`): each panel lists the input channels that hold any non-pruned weight in its rows.
The GEMV's panels are always 8 rows. See docs/KERNELS.md.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

from ..core.errors import ConfigError, KernelBuildError
from .library import load

ROWS = 8  # the largest panel height; also the compact unified GEMV block height
PANEL_HEIGHTS = (1, 2, 4, 8)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                     dilation: tuple[int, int] = (1, 1), clamp: tuple[float, float] | None = None,
                     threads: int = 1, isa: str | None = None) -> torch.Tensor:
    """A depthwise conv (groups = channels) on the native vectorised kernel, float32, CPU.

    ``x`` ``[N, C, H, W]``; ``weight`` ``[C, 1, kh, kw]`` (at most 64 taps); ``bias`` ``[C]`` or None; stride,
    padding (zeros) and dilation per axis (>= 1, >= 0, >= 1); ``clamp`` ``(lo, hi)`` applies
    ``min(max(y, lo), hi)`` to the output in the same pass (ReLU6: ``(0, 6)``); ``threads`` >= 1. Returns
    ``[N, C, Ho, Wo]`` as torch computes them. What the lean plan's grouped-conv op runs for depthwise convs.
    """
    lib = load(isa)
    n, c, h, w = (int(v) for v in x.shape)
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ConfigError(f"depthwise weight must be [C, 1, kh, kw] with C = {c}, got {tuple(weight.shape)}")
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"input {tuple(x.shape)} is smaller than the dilated {kh}x{kw} kernel")
    x = x.detach().float().contiguous()
    wt = weight.detach().float().contiguous()
    b = None if bias is None else bias.detach().float().contiguous()
    geom = torch.tensor([c, h, w, kh, kw, sh, sw, ph, pw, dh, dw], dtype=torch.int32)
    y = torch.empty(n, c, ho, wo, dtype=torch.float32)
    lo, hi = clamp if clamp is not None else (0.0, 0.0)
    rc = lib.up_dwconv_run(x.data_ptr(), y.data_ptr(), wt.data_ptr(), _ptr(b), geom.data_ptr(), n,
                           int(clamp is not None), float(lo), float(hi), int(threads))
    if rc:
        raise ConfigError(f"depthwise conv failed (code {rc}) on input {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return y


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


def panel_height(block_out: int) -> int:
    """The panel height the conv kernel uses for blocks of ``block_out`` (>= 1) output channels.

    The block height itself when it is 1, 2, 4 or 8, so a panel never mixes blocks and a pruned block is
    skipped exactly; 8 otherwise (any height runs correctly, with panels that mix blocks and skip less).
    """
    if not isinstance(block_out, int) or block_out < 1:
        raise ConfigError(f"block height must be a positive integer, got {block_out!r}")
    return block_out if block_out in PANEL_HEIGHTS else ROWS


@dataclass
class PackedPanels:
    """Weights packed per panel of ``rows`` output channels (see the module docstring).

    ``panel_ptr`` int32 ``[P+1]``; ``ch`` int32 ``[nnz]``; ``w`` float32 ``[nnz, taps, rows]``.
    """

    panel_ptr: torch.Tensor
    ch: torch.Tensor
    w: torch.Tensor
    rows: int = ROWS

    @property
    def nnz(self) -> int:
        return int(self.ch.numel())


def pack_panels(weight: torch.Tensor, keep: torch.Tensor, rows: int = ROWS) -> PackedPanels:
    """Pack ``weight`` ``[Co, Ci, *window]`` keeping, per panel of ``rows`` (1, 2, 4 or 8) output channels,
    the input channels where ``keep``.

    ``keep``: bool ``[Co, Ci]``, True where the (output, input) channel pair holds a weight to run; a panel
    keeps input channel c when any of its rows keeps it (rows that do not are packed as zeros).
    """
    if rows not in PANEL_HEIGHTS:
        raise ConfigError(f"panel height must be one of {PANEL_HEIGHTS}, got {rows!r}")
    co, ci = weight.shape[0], weight.shape[1]
    w = weight.detach().float().reshape(co, ci, -1)
    taps = w.shape[2]
    panels = (co + rows - 1) // rows
    pad = panels * rows - co
    keep_rows = keep.bool()
    if pad:
        w = torch.cat([w, w.new_zeros(pad, ci, taps)])
        keep_rows = torch.cat([keep_rows, keep_rows.new_zeros(pad, ci)])
    w = w * keep_rows[:, :, None]
    used = keep_rows.reshape(panels, rows, ci).any(1)  # [P, Ci]
    pi, cidx = used.nonzero(as_tuple=True)  # sorted by panel, then channel
    counts = torch.bincount(pi, minlength=panels)
    panel_ptr = torch.zeros(panels + 1, dtype=torch.int64)
    panel_ptr[1:] = torch.cumsum(counts, 0)
    packed = w.reshape(panels, rows, ci, taps)[pi, :, cidx, :]  # [nnz, rows, taps]
    return PackedPanels(_i32(panel_ptr), _i32(cidx), packed.permute(0, 2, 1).contiguous(), rows)


PRECISIONS = ("fp32", "bf16")
#: A bf16 conv's engine (``up_conv_create_bf16``): auto (AMX, else the bf16 dot product, else float32), the
#: float32 kernels, or the bf16 dot product (VDPBF16PS) even where AMX is present.
CONV_ENGINES = {"fp32": 0, "auto": 1, "dpbf16": 2}
_RUNS_ON = ("fp32", "amx_bf16", "bf16_dot")  # up_conv_engine's answer


def bf16_bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bfloat16 (nearest even), as int16 bit patterns in a tensor of ``t``'s shape: how bf16
    weights are handed to the kernels and stored in a plan."""
    return t.detach().float().to(torch.bfloat16).contiguous().view(torch.int16)


class SparseConv:
    """A block-sparse 2-D convolution (groups=1) on the native kernels; inference only, float32 in and out, CPU.

    Owns its native plan (packed weights and scratch); freed when this object is collected. ``rows``: the
    panel height (1, 2, 4 or 8 output channels; :func:`panel_height` of the layer's block height), ``isa``:
    which build runs it (default the process's, see :func:`resolve_isa`). ``precision``: ``"fp32"``, or
    ``"bf16"`` (weights rounded to bfloat16; on AMX tiles where the build and CPU have them, else on the bf16
    dot product (VDPBF16PS) where they have avx512_bf16: activations rounded too and products accumulated in
    float32; elsewhere the float32 kernels with the bf16 weights). ``engine`` (bf16 only): ``"auto"`` as just
    said, ``"fp32"`` the float32 kernels, ``"dpbf16"`` the dot product even where AMX is present (float32
    where avx512_bf16 is absent); ``amx=False`` is ``engine="fp32"``. :attr:`engine` says which runs:
    ``"amx_bf16"``, ``"bf16_dot"`` or ``"fp32"``.
    """

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None,
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                 rows: int = ROWS, isa: str | None = None, precision: str = "fp32", amx: bool = True,
                 engine: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if engine not in CONV_ENGINES:
            raise ConfigError(f"engine must be one of {list(CONV_ENGINES)}, got {engine!r}")
        lib = load(isa)
        co, ci, kh, kw = (int(s) for s in weight.shape)
        self.out_channels, self.kernel_size, self.rows = co, (kh, kw), rows
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        packed = pack_panels(weight, keep, rows)
        self.nnz = packed.nnz
        geom = torch.tensor([co, ci, kh, kw, *self.stride, *self.padding, *self.dilation], dtype=torch.int32)
        b = None if bias is None else bias.detach().float().contiguous()
        args = (_ptr(geom), rows, (co + rows - 1) // rows, _ptr(packed.panel_ptr), _ptr(packed.ch))
        if precision == "bf16":
            wb = bf16_bits(packed.w)  # held: a pointer into a temporary would dangle
            plan = lib.up_conv_create_bf16(*args, _ptr(wb), _ptr(b), CONV_ENGINES[engine if amx else "fp32"])
        else:
            plan = lib.up_conv_create(*args, _ptr(packed.w), _ptr(b))
        if not plan:
            raise KernelBuildError(f"the native conv plan could not be created for weight {tuple(weight.shape)} "
                                   "(out of memory or an unsupported geometry)")
        self._plan = plan
        self.precision = precision
        self.engine = _RUNS_ON[int(lib.up_conv_engine(plan))]
        self._finalizer = weakref.finalize(self, lib.up_conv_destroy, plan)
        self._run = lib.up_conv_run
        self._lock = threading.Lock()  # the plan's scratch buffers serve one call at a time
        self._out_shapes: dict[torch.Size, tuple[int, ...]] = {}

    def __deepcopy__(self, memo: dict) -> SparseConv:
        return self  # the native plan is read-only after creation and guarded by a lock: share, never double-free

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def __call__(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        """``x`` float32 ``[N, Ci, H, W]`` -> ``[N, Co, Ho, Wo]``, on ``threads`` (>= 1) threads."""
        x = x.contiguous()
        n, _, h, w = x.shape
        out = self._out_shapes.get(x.shape)
        if out is None:  # computing it costs a microsecond of Python per call
            out = self._out_shapes[x.shape] = (n, self.out_channels, *self.output_hw(h, w))
        y = torch.empty(*out, dtype=torch.float32)
        with self._lock:
            rc = self._run(self._plan, x.data_ptr(), y.data_ptr(), n, h, w, threads)
        if rc:
            raise ValueError(f"sparse conv failed (code {rc}) on input {tuple(x.shape)}: input smaller than the kernel?")
        return y


class SparseGemv:
    """A block-sparse ``y = x W^T + b``: batch 1 (memory-bound) one sample at a time, larger batches in
    tiles of samples that load each weight once.

    Kept weights are packed like :class:`SparseConv`'s; unified blocks given in ``unified`` run in
    compact form: one magnitude and one sign byte per input channel (bit r: row r is negative); that
    saves memory traffic only at small batches.
    """

    def __init__(self, weight: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None,
                 unified: list[tuple[int, int, int, float]] | None = None, isa: str | None = None) -> None:
        """``unified``: ``(panel, first input channel, input channels, magnitude)`` per compact block of 8
        rows, in panel order; their weights must be absent from ``keep``. Panels are always 8 rows here,
        whatever the block height (correct for any; a GEMV row is one vector of 8 outputs)."""
        lib = load(isa)
        co, ci = int(weight.shape[0]), int(weight.shape[1])
        self.out_features = co
        packed = pack_panels(weight, keep)
        self.nnz = packed.nnz
        panels = (co + ROWS - 1) // ROWS
        unified = unified or []
        counts = torch.zeros(panels + 1, dtype=torch.int64)
        signs, soff = [], []
        neg = (weight.detach() < 0).to(torch.int32)
        neg = torch.cat([neg, neg.new_zeros(panels * ROWS - co, ci)]) if panels * ROWS > co else neg
        bits = (neg.reshape(panels, ROWS, ci) << torch.arange(ROWS, dtype=torch.int32)[None, :, None]).sum(1)
        off = 0
        for p, c0, length, _m in unified:
            counts[p + 1] += 1
            signs.append(bits[p, c0:c0 + length])
            soff.append(off)
            off += length
        uptr = _i32(torch.cumsum(counts, 0))
        uch0 = _i32(torch.tensor([u[1] for u in unified] or [0]))
        ulen = _i32(torch.tensor([u[2] for u in unified] or [0]))
        usoff = _i32(torch.tensor(soff or [0]))
        umag = torch.tensor([u[3] for u in unified] or [0.0], dtype=torch.float32)
        usign = (torch.cat(signs) if signs else torch.zeros(1, dtype=torch.int32)).to(torch.uint8).contiguous()
        self.n_unified = len(unified)
        b = None if bias is None else bias.detach().float().contiguous()
        plan = lib.up_gemv_create(co, ci, panels, _ptr(packed.panel_ptr), _ptr(packed.ch), _ptr(packed.w),
                                  _ptr(uptr), _ptr(uch0), _ptr(ulen), _ptr(usoff), _ptr(umag), _ptr(usign),
                                  int(usign.numel()), _ptr(b))
        if not plan:
            raise KernelBuildError(f"the native GEMV plan could not be created for weight {tuple(weight.shape)}")
        self._plan = plan
        self._finalizer = weakref.finalize(self, lib.up_gemv_destroy, plan)
        self._run = lib.up_gemv_run
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> SparseGemv:
        return self  # as SparseConv: share the read-only native plan

    def __call__(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        """``x`` float32 ``[N, Ci]`` -> ``[N, Co]``."""
        x = x.contiguous()
        y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
        with self._lock:
            rc = self._run(self._plan, x.data_ptr(), y.data_ptr(), x.shape[0], threads)
        if rc:
            raise MemoryError(f"sparse GEMV failed (code {rc}) on input {tuple(x.shape)}: out of memory")
        return y

