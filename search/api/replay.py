"""``replay``: run a learned agent, or apply a saved policy, on a new model and write the policy it gives.

An agent walks the new model's env with its deterministic actions (no noise); the observation is
normalised per network, so an agent searched on ResNet-20 reads ResNet-56's layers on the same scale.
Budget clipping (the action wall) applies as in a search, so the written policy meets the budget by the
new model's latency table. A saved policy is applied through the same wall with no caps (its fractions
are the actions) to every layer, by name; layers it does not name stay dense.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from uniprune.compressors.core.errors import PolicyError, RunDirError
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.core.projection import check_policy_model
from uniprune.compressors.formats.run_dir import RunDir, read_json_object
from uniprune.envs import CompressionEnv
from uniprune.search.searchers import agent_policy, play

from .env import build_env
from .paths import check_out_file
from .result import Result
from .specs import ReplaySpec

#: What a replay takes from the agent's run unless told otherwise: how actions map to fractions and how
#: policies are scored. Model, checkpoint and data are the new model's, never the run's.
FROM_RUN = ("latency_budget", "max_prune", "max_unify", "reward", "size_budget", "bn_recalibrate", "latency_model",
            "latency_statistic", "batch_size", "threads", "val_samples", "eval_batch_size", "keep_dense")


@dataclass(frozen=True)
class ReplayResult(Result):
    """The written policy and its predicted figures."""

    policy: str
    latency_ratio: float
    val_accuracy: float
    size_ratio: float
    latency_budget: float
    clipped_layers: int
    layers: int
    model: str
    seconds: float


def agent_path(given: str) -> Path:
    """The agent's ``agent.json`` (given a run directory or the file); RunDirError when absent."""
    path = Path(given).expanduser()
    if path.is_dir():
        path = RunDir(path).agent_path
    if not path.is_file():
        raise RunDirError(f"agent file {str(path)!r} does not exist; pass the run directory of a "
                          "'uniprune search --searcher ddpg' (or its agent.json)")
    return path


def agent_run_options(given: str) -> dict[str, Any]:
    """The options of the search that made the agent (its run's ``config.json``) that a replay takes: :data:`FROM_RUN`."""
    stored = read_json_object(RunDir(agent_path(given).parent).config_path, fix="pass the options yourself or fix the file")
    return {k: v for k, v in stored.items() if k in FROM_RUN}


def _load_agent(path: Path, env: CompressionEnv, *, trust_pickle: bool) -> Any:
    from uniprune.agent import load_agent, load_sb3_zip

    if path.suffix == ".zip" and trust_pickle:
        print(f"uniprune replay: warning: reading {path} with pickle (--trust-pickle): a crafted file runs code here",
              file=sys.stderr)
        agent = load_sb3_zip(path, device="cpu")
    else:
        agent = load_agent(path, device="cpu")  # refuses a .zip: pickled code never runs without --trust-pickle
    want, got = env.observation_space.shape, agent.observation_space.shape
    if got != want or agent.action_space.shape != env.action_space.shape:
        raise RunDirError(
            f"agent {str(path)!r} observes {got} and acts {agent.action_space.shape}, this version's env observes {want} "
            f"and acts {env.action_space.shape}; search again with this version"
        )
    return agent


def _check_same_layers(policy: Policy, env: CompressionEnv) -> None:
    """PolicyError naming the layers of the policy the model lacks; a note naming the ones it leaves dense."""
    extra = [n for n in policy.layers if n not in env.layer_names]
    if extra:
        raise PolicyError(f"the policy names {len(extra)} layer(s) this model lacks ({', '.join(extra[:5])}); "
                          "was it made for another architecture?")
    dense = [n for n in env.layer_names if n not in policy.layers]
    if dense:
        print(f"uniprune replay: note: the policy leaves {len(dense)} compressible layer(s) dense: {', '.join(dense[:5])}"
              + (", ..." if len(dense) > 5 else ""), file=sys.stderr)


def _policy_shapes(policy: Policy, given: str) -> str:
    """``--block-shape`` for replaying ``policy``: ``given``, with the shapes the policy's layers carry added after it."""
    keys = given.split(",")
    for action in policy.layers.values():
        if action.block is not None and action.block.key not in keys:
            keys.append(action.block.key)
    return ",".join(keys)


def replay(spec: ReplaySpec) -> ReplayResult:
    """Walk ``spec.agent``'s actions (or apply ``spec.policy``) on ``spec.env``'s model and write the policy to ``spec.out``."""
    started = time.perf_counter()
    out = check_out_file(spec.out, spec.force, example="policy.json")
    if spec.agent:
        path = agent_path(spec.agent)
        env = build_env(spec.env, verb="replay")
        result = agent_policy(_load_agent(path, env, trust_pickle=spec.trust_pickle), env)
        source: dict[str, Any] = {"agent": str(path.resolve())}
    else:
        saved = Policy.load(spec.policy)
        check_policy_model(saved, spec.env.model.model)
        # the policy's fractions (and block shapes) are the actions: no caps, and every layer is walked
        env = build_env(spec.env.replace(max_prune=1.0, max_unify=1.0, keep_dense="none",
                                         block_shape=_policy_shapes(saved, spec.env.budget.block_shape)), verb="replay")
        _check_same_layers(saved, env)
        wanted = [env.wall.raw_action(i, saved.action(n).as_action()) for i, n in enumerate(env.layer_names)]
        result = play(env, lambda t, obs: wanted[t])
        source = {"policy": str(Path(str(spec.policy)).resolve())}
    requested = result.get("requested", {})
    clipped = [n for n, a in result["actions"].items()
               if n in requested and (not np.allclose(requested[n][:2], a[:2], atol=1e-6) or requested[n][2:] != a[2:])]
    policy = env.policy(result["actions"])
    policy.predicted = {k: result[k] for k in ("latency_ratio", "size_ratio", "val_accuracy", "reward")}
    policy.search = {"replayed": True, **source, "checkpoint": spec.env.model.checkpoint, "clipped_layers": clipped,
                     "latency_model": spec.env.latency.latency_model, "seed": spec.env.seed}
    policy.save(out)
    return ReplayResult(policy=str(out), latency_ratio=result["latency_ratio"], val_accuracy=result["val_accuracy"],
                        size_ratio=result["size_ratio"], latency_budget=spec.env.budget.latency_budget,
                        clipped_layers=len(clipped), layers=env.num_layers, model=spec.env.model.model,
                        seconds=time.perf_counter() - started)
