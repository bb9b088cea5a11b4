"""Optional CUDA path: structured layers as torch block-sparse (BSR) matrix products on a GPU.

UNMEASURED: no GPU was available while this was written, so it is correct by construction (it only
uses ``torch.sparse.mm`` on a BSR weight, with convs as unfold + GEMM, and is checked against the
masked dense layer by ``tests/test_runtime.py`` when a GPU is present) but its speed is unknown.
Pruned blocks are absent from the BSR matrix; unified blocks are materialised (cuSPARSE has no
shared-magnitude format). BSR needs blocks that tile the weight exactly, so a layer whose channel
counts the block shape does not divide stays dense.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import NotAvailableError
from ..core.projection import structured_weight
from ..core.structure import LayerStructure
from .runtime import fold_batchnorm


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU."""
    return torch.cuda.is_available()


class BsrLayer(nn.Module):
    """A Linear or groups=1 Conv2d whose weight runs as a BSR matrix on CUDA (inference only)."""

    def __init__(self, module: nn.Module, structure: LayerStructure, device: torch.device) -> None:
        super().__init__()
        self.conv = isinstance(module, nn.Conv2d)
        w = module.weight.detach().to(device)
        self.out_features = w.shape[0]
        bo, bi = structure.grid.block_shape.out, structure.grid.block_shape.inp
        window = structure.grid.window
        self.bias = None if module.bias is None else module.bias.detach().to(device)
        if self.conv:
            self.kernel_size, self.stride = module.kernel_size, module.stride
            self.padding, self.dilation = module.padding, module.dilation
            # unfold orders columns (channel, ky, kx), so a block of bi channels is bi*window columns
            self.weight = w.reshape(w.shape[0], -1).to_sparse_bsr((bo, bi * window))
        else:
            self.weight = w.to_sparse_bsr((bo, bi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            y = torch.sparse.mm(self.weight, x.reshape(-1, x.shape[-1]).t()).t()
            y = y if self.bias is None else y + self.bias
            return y.reshape(*x.shape[:-1], -1)
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, K, L]
        k, length = cols.shape[1], cols.shape[2]
        y = torch.sparse.mm(self.weight, cols.permute(1, 0, 2).reshape(k, n * length))
        y = y.reshape(self.out_features, n, length).permute(1, 0, 2)
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        y = y.reshape(n, self.out_features, ho, wo)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


def _tiles(module: nn.Module, structure: LayerStructure) -> bool:
    bo, bi = structure.grid.block_shape.out, structure.grid.block_shape.inp
    ok_groups = not isinstance(module, nn.Conv2d) or (module.groups == 1 and isinstance(module.padding, tuple))
    return ok_groups and module.weight.shape[0] % bo == 0 and module.weight.shape[1] % bi == 0


def compile_model_cuda(model: nn.Module, structures: Mapping[str, LayerStructure], *,
                       device: str | torch.device = "cuda") -> nn.Module:
    """An eval-mode CUDA copy of ``model`` with each structured layer as a BSR product (see module docstring).

    Raises :class:`NotAvailableError` when torch sees no CUDA GPU.
    """
    if not cuda_available():
        raise NotAvailableError("the CUDA path needs a CUDA GPU and a CUDA build of torch; use compile_model on CPU")
    dev = torch.device(device)
    out = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for name, s in structures.items():
            m = out.get_submodule(name)
            m.weight.copy_(structured_weight(m.weight.detach(), s))
    fold_batchnorm(out)
    out = out.to(dev)
    for name, s in structures.items():
        m = out.get_submodule(name)
        if _tiles(m, s):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, BsrLayer(m, s, dev))
    return out.requires_grad_(False)
