"""`uniprune replay`: run a learned agent, or a saved policy, on another model and write the policy it gives.

``--agent RUN`` (a search's run directory, or its ``agent.json``) walks the new model's environment with the agent's deterministic actions (no
noise). The observation is normalised per network, so an agent searched on ResNet-20 reads ResNet-56's
layers on the same scale. Budget clipping (the action wall) applies as in a search, so the written
policy meets ``--latency-budget`` by the new model's latency table. Options the user leaves at their
defaults are taken from the agent's run (``config.json`` next to ``agent.json``), so the actions mean the
same fractions they meant in the search (``--max-prune``/``--max-unify`` scale them). An agent is read
without pickle (:mod:`uniprune.agent.storage`); a stable-baselines3 ``agent.zip`` only with ``--trust-pickle``.

``--policy FILE`` instead applies a saved policy to another checkpoint of the same architecture: every
layer must match by name, and the policy's fractions go through the same wall (they are unchanged
unless the budget or the latency table differs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from uniprune.compressors.core.errors import ConfigError, PolicyError, RunDirError
from uniprune.compressors.core.policy import Policy
from uniprune.compressors.core.projection import check_policy_model
from uniprune.envs import CompressionEnv
from uniprune.search.run_dir import read_json_object
from uniprune.search.searchers import agent_policy, play

from .common import check_writable
from .env_options import add_env_arguments, make_env, take_stored_options, validate_env_arguments

NAME = "replay"
HELP = "run a saved agent (or apply a saved policy) on a new model and write the policy it gives"

# What a replay takes from the agent's run when left at its default: how actions map to fractions and how
# policies are scored. Model, checkpoint and data are the new model's, never the run's.
_FROM_RUN = ("latency_budget", "max_prune", "max_unify", "reward", "size_budget", "bn_recalibrate", "latency_model", "latency_statistic",
             "batch_size", "threads", "val_samples", "eval_batch_size", "keep_dense")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--agent", help="the run directory of a DDPG search (or its agent.json)")
    source.add_argument("--policy", help="policy.json to apply to another checkpoint of the same architecture")
    add_env_arguments(parser)
    parser.add_argument("--out", required=True, help="where to write the policy (policy.json); an existing file needs --force")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also read a stable-baselines3 agent.zip (pickled code: it runs on load; only for files you made)")


def _agent_path(given: str) -> Path:
    path = Path(given).expanduser()
    if path.is_dir():
        path = path / "agent.json"
    if not path.is_file():
        raise RunDirError(f"agent file {str(path)!r} does not exist; pass the run directory of a "
                          "'uniprune search --searcher ddpg' (or its agent.json)")
    return path


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file path such as {out / 'policy.json'}")
    if out.exists() and not args.force:
        raise ConfigError(f"--out {out} already exists; pass --force to overwrite it or choose another path")
    check_writable(out, "--out")
    if args.agent:
        agent_path = _agent_path(args.agent)
        taken = take_stored_options(args, read_json_object(agent_path.parent / "config.json", fix="pass the options yourself or fix the file"), add_arguments, keys=_FROM_RUN)
        if taken:
            print(f"uniprune replay: from the agent's run: {', '.join('--' + k.replace('_', '-') for k in taken)}", file=sys.stderr)
        validate_env_arguments(args)
        env = make_env(args, verb="replay")
        agent = _load_agent(agent_path, env, trust_pickle=args.trust_pickle)
        result = agent_policy(agent, env)
        source = {"agent": str(agent_path.resolve())}
    else:
        saved = Policy.load(args.policy)
        check_policy_model(saved, args.model)
        if saved.latency_budget is not None:
            take_stored_options(args, {"latency_budget": saved.latency_budget}, add_arguments, keys=("latency_budget",))
        # The policy's fractions are the actions: no caps, so raw action = fraction; every layer is walked and
        # the ones the policy does not name stay dense, as the policy format says.
        args.max_prune, args.max_unify, args.keep_dense = 1.0, 1.0, "none"
        validate_env_arguments(args)
        env = make_env(args, verb="replay")
        _check_same_layers(saved, env)
        wanted = [np.array([saved.action(n).prune, saved.action(n).unify]) for n in env.layer_names]
        result = play(env, lambda t, obs: wanted[t])
        source = {"policy": str(Path(args.policy).resolve())}
    requested = result.get("requested", {})
    clipped = [n for n, a in result["actions"].items() if n in requested and not np.allclose(requested[n], a, atol=1e-6)]
    policy = env.policy(result["actions"])
    policy.predicted = {k: result[k] for k in ("latency_ratio", "size_ratio", "val_accuracy", "reward")}
    policy.search = {"replayed": True, **source, "checkpoint": args.checkpoint, "clipped_layers": clipped,
                     "latency_model": args.latency_model, "seed": args.seed}
    policy.save(out)
    return {
        "policy": str(out),
        "latency_ratio": result["latency_ratio"],
        "val_accuracy": result["val_accuracy"],
        "size_ratio": result["size_ratio"],
        "latency_budget": args.latency_budget,
        "clipped_layers": len(clipped),
        "layers": env.num_layers,
        "model": args.model,
        "seconds": time.perf_counter() - started,
    }
