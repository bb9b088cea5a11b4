"""ADMM fine-tuning under ``torchrun --nproc_per_node 2`` (gloo, CPU) yields a valid compressed model.

The test starts this file under torchrun; each worker runs the ``__main__`` part below.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from uniprune.compressors.core.policy import LayerAction, Policy
from uniprune.compressors.core.projection import BlockClasses, structure_error
from uniprune.compressors.formats.checkpoint import load_compressed, save_compressed
from uniprune.compressors.train.distributed import world
from uniprune.compressors.train.finetune import AdmmConfig, finetune
from uniprune.compressors.train.training import evaluate

POLICY = Policy(layers={"0": LayerAction(0.25, 0.25), "3": LayerAction(0.5, 0.25), "7": LayerAction(0.5, 0.5)}, model="toy")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _worker(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, size = world()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 3, 8, 8, generator=gen), torch.randint(0, 4, (256,), generator=gen)

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(256, generator=torch.Generator().manual_seed(epoch))  # same on every rank
        return [(x[order[i : i + 32]], y[order[i : i + 32]]) for i in range(0, 256, 32)]

    steps: list[int] = []
    model = _model()
    model.register_forward_pre_hook(lambda m, a: steps.append(a[0].shape[0]) if m.training else None)
    config = AdmmConfig(iterations=2, rho=0.5, retrain_epochs=1, progress=False)
    result = finetune(model, POLICY, batches, lambda m: evaluate(m, [(x[:64], y[:64])]), config)
    torch.save({"state_dict": model.state_dict(), "steps": len(steps), "accuracy": result["accuracy"]}, out / f"rank{rank}.pt")
    if rank == 0:
        save_compressed(out / "compressed.pt", model, result["structures"], model_name="toy", num_classes=4,
                        input_shape=(3, 8, 8), policy=POLICY, meta={"world_size": size})
    dist.barrier()
    dist.destroy_process_group()


def test_torchrun_two_processes(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # 8 batches per epoch sharded over 2 ranks -> 4 steps per epoch and rank, 3 epochs
    assert ranks[0]["steps"] == ranks[1]["steps"] == 12
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]  # evaluated on rank 0 and broadcast
    for key, value in ranks[0]["state_dict"].items():
        if value.is_floating_point() and "running" not in key:  # DDP keeps parameters identical on all ranks
            assert torch.allclose(value, ranks[1]["state_dict"][key], atol=1e-6), key
    name, state, structures, meta = load_compressed(tmp_path / "compressed.pt")
    assert name == "toy" and meta["world_size"] == 2 and set(structures) == {"0", "3", "7"}
    for layer, structure in structures.items():
        action = POLICY.action(layer)
        n_p, n_u = BlockClasses.of(structure.grid).blocks(action.prune, action.unify)
        assert structure.counts()["prune"] == n_p and structure.counts()["unify"] == n_u
        err = structure_error(state[f"{layer}.weight"], structure)
        assert err["pruned_max_abs"] == 0.0 and err["unified_spread"] <= 1e-6
    model = _model()
    model.load_state_dict(state)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
else:
    pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
