"""An :class:`~uniprune.agent.AMCDDPG` on disk without pickle: tensors, JSON and ``.npz``, nothing that runs code.

People hand learned agents to each other ("replay a learned policy on a new model"), so reading one must
never execute anything. stable-baselines3's own ``save`` writes a zip whose ``data`` entry and replay
buffer are cloudpickle; a crafted file runs its payload on load. Here an agent is three files:

- ``agent.json``: format, the settings that rebuild the SB3 objects (hyper-parameters, the observation
  and action spaces as bounds and shape), and the counters that say how far it got;
- ``agent.pt``: the policy's and the two optimisers' state dicts, read with ``torch.load(weights_only=True)``;
- ``replay_buffer.npz`` (optional, for ``--resume``): the stored transitions and the reward baseline, read
  with ``np.load(allow_pickle=False)``.

:func:`load_agent` rebuilds the agent from them; an SB3 zip is read only through :func:`load_sb3_zip`,
which the CLI calls behind ``--trust-pickle``.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from uniprune.compressors.core.errors import RunDirError
from uniprune.compressors.formats.fileio import read_json, write_bytes_atomic, write_json_atomic
from uniprune.compressors.formats.run_dir import AGENT_BUFFER, AGENT_SETTINGS, AGENT_WEIGHTS

from .buffer import EpisodeRewardBuffer
from .ddpg import AMCDDPG

FORMAT = "uniprune.agent/1"
SETTINGS, WEIGHTS, BUFFER = AGENT_SETTINGS, AGENT_WEIGHTS, AGENT_BUFFER  # named by the run directory's format
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _box(space: spaces.Box) -> dict[str, Any]:
    return {"low": np.asarray(space.low, dtype=np.float64).reshape(-1).tolist(),
            "high": np.asarray(space.high, dtype=np.float64).reshape(-1).tolist(), "shape": list(space.shape)}


def save_agent(agent: AMCDDPG, directory: str | os.PathLike, *, replay_buffer: bool = True) -> list[Path]:
    """Write ``agent.json``, ``agent.pt`` (and ``replay_buffer.npz``) into ``directory`` atomically; returns the paths."""
    directory = Path(directory)
    settings = {
        "format": FORMAT,
        "settings": {**agent.settings, "episode_length": agent.episode_length},
        "observation_space": _box(agent.observation_space),
        "action_space": _box(agent.action_space),
        "progress": {"episodes": int(agent._episode_num), "num_timesteps": int(agent.num_timesteps),
                     "n_updates": int(agent._n_updates)},
        "explore_rng": agent.explore_rng.bit_generator.state,
    }
    weights = {"policy": agent.policy.state_dict(), "actor_optimizer": agent.actor.optimizer.state_dict(),
               "critic_optimizer": agent.critic.optimizer.state_dict()}
    for name, tensor in weights["policy"].items():
        if not bool(torch.isfinite(tensor).all()):
            raise RunDirError(f"the agent's {name} holds non-finite values; it is not saved (the search diverged)")
    buf = io.BytesIO()
    torch.save(weights, buf)
    paths = [write_bytes_atomic(directory / WEIGHTS, buf.getvalue())]
    if replay_buffer:
        rb = agent.replay_buffer
        size = rb.size()
        arrays = {k: np.asarray(getattr(rb, k)[:size]) for k in _BUFFER_ARRAYS}
        meta = np.asarray([float(rb.pos), float(rb.full), float(getattr(rb, "episodes_stored", 0)),
                           math.nan if getattr(rb, "baseline", None) is None else float(rb.baseline)])
        buf = io.BytesIO()
        np.savez(buf, meta=meta, **arrays)
        paths.append(write_bytes_atomic(directory / BUFFER, buf.getvalue()))
    # the settings last: a folder whose agent.json exists has the weights it names
    paths.insert(0, write_json_atomic(directory / SETTINGS, settings))
    return paths


class _Spaces(gym.Env):
    """Stands for the env when an agent is rebuilt only to act (replay): it has the spaces and nothing else."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Box) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: D102
        raise RuntimeError("this agent was loaded without an environment; pass env= to train it")

    def step(self, action):  # noqa: D102
        raise RuntimeError("this agent was loaded without an environment; pass env= to train it")


def _read_box(record: Any, where: str) -> spaces.Box:
    try:
        shape = tuple(int(s) for s in record["shape"])
        low = np.asarray(record["low"], dtype=np.float32).reshape(shape)
        high = np.asarray(record["high"], dtype=np.float32).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{where}: a space is malformed ({exc}); pass an agent.json a search wrote") from None
    return spaces.Box(low, high, dtype=np.float32)


def _agent_files(path: str | os.PathLike) -> Path:
    """The folder holding ``agent.json`` for a run directory or a path to ``agent.json``/``agent.pt``."""
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    if p.suffix == ".zip":
        raise RunDirError(f"{p} is a stable-baselines3 zip, which holds pickled code; pass --trust-pickle only if "
                          "you made it yourself, or use the agent.json a search of this version wrote")
    if not (folder / SETTINGS).is_file():
        raise RunDirError(f"no {SETTINGS} in {folder}; pass a run directory of 'uniprune search --searcher ddpg' "
                          "or its agent.json")
    return folder


def load_agent(path: str | os.PathLike, env: Any = None, *, device: str = "cpu", replay_buffer: bool = False) -> AMCDDPG:
    """Rebuild an agent from ``agent.json`` + ``agent.pt`` (in the run directory ``path``, or next to the file
    ``path``); with ``replay_buffer``, the transitions of ``replay_buffer.npz`` too (for ``--resume``).

    ``env``: the environment to go on learning in, or ``None`` to only act (replay). Raises
    :class:`RunDirError` with one line for any missing, malformed or mismatched file; nothing read runs code.
    """
    folder = _agent_files(path)
    where = str(folder / SETTINGS)
    record = read_json(folder / SETTINGS, RunDirError, "pass an agent.json a search wrote")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RunDirError(f"{where} is not a uniprune agent (format {record.get('format') if isinstance(record, dict) else None!r}, "
                          f"expected {FORMAT!r})")
    obs_space = _read_box(record.get("observation_space"), where)
    act_space = _read_box(record.get("action_space"), where)
    if env is not None and (env.observation_space.shape != obs_space.shape or env.action_space.shape != act_space.shape):
        raise RunDirError(f"the agent in {folder} observes {obs_space.shape} and acts {act_space.shape}, the env observes "
                          f"{env.observation_space.shape} and acts {env.action_space.shape}; search again with this version")
    try:
        weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{folder / WEIGHTS} is missing; the agent's weights go with its agent.json") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickled code, anything: the file is the cause
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise RunDirError(f"{folder / WEIGHTS} cannot be read safely ({type(exc).__name__}: {first}); "
                          "pass the agent.pt a search wrote") from None
    settings = dict(record.get("settings") or {})
    try:
        settings["hidden"] = tuple(settings.get("hidden", ()))
        agent = AMCDDPG(env=env if env is not None else _Spaces(obs_space, act_space), device=device, **settings)
        agent.policy.load_state_dict(weights["policy"])
        agent.actor.optimizer.load_state_dict(weights["actor_optimizer"])
        agent.critic.optimizer.load_state_dict(weights["critic_optimizer"])
        progress = record.get("progress") or {}
        agent._episode_num = int(progress.get("episodes", 0))
        agent.num_timesteps = int(progress.get("num_timesteps", 0))
        agent._n_updates = int(progress.get("n_updates", 0))
        if isinstance(record.get("explore_rng"), dict):
            agent.explore_rng.bit_generator.state = record["explore_rng"]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise RunDirError(f"the agent in {folder} does not fit its settings ({type(exc).__name__}: {first}); "
                          "pass the agent.json and agent.pt of one search") from None
    if replay_buffer and (folder / BUFFER).is_file():
        _load_buffer(agent, folder / BUFFER)
    return agent


def _load_buffer(agent: AMCDDPG, path: Path) -> None:
    rb = agent.replay_buffer
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _BUFFER_ARRAYS}
            pos, full, episodes, baseline = (float(v) for v in z["meta"])
    except Exception as exc:  # noqa: BLE001 - a damaged or crafted npz: one line, nothing executed
        raise RunDirError(f"{path} cannot be read ({type(exc).__name__}); delete it to resume without the stored "
                          "transitions, or start over with --force") from None
    size = len(arrays["observations"])
    if size > rb.buffer_size or any(len(a) != size for a in arrays.values()) or not all(
            np.isfinite(a).all() for a in arrays.values()):
        raise RunDirError(f"{path} holds {size} transitions of unequal length, non-finite values or more than the "
                          f"buffer's {rb.buffer_size}; delete it to resume without them")
    for k, a in arrays.items():
        getattr(rb, k)[:size] = a.reshape(getattr(rb, k)[:size].shape)
    rb.pos, rb.full = int(pos), bool(full)
    if isinstance(rb, EpisodeRewardBuffer):
        rb.episodes_stored = int(episodes)
        rb.baseline = None if math.isnan(baseline) else baseline
        rb.discard_pending()


def load_sb3_zip(path: str | os.PathLike, env: Any = None, *, device: str = "cpu") -> AMCDDPG:
    """Read a stable-baselines3 zip: pickled code that runs on load, so only for files the user made (the CLI's
    ``--trust-pickle`` says so and warns)."""
    try:
        return AMCDDPG.load(path, env=env, device=device)
    except Exception as exc:  # noqa: BLE001 - a corrupt zip fails anywhere in SB3's loader
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise RunDirError(f"agent file {str(path)!r} cannot be read ({type(exc).__name__}: {first})") from None


__all__ = ["FORMAT", "load_agent", "load_sb3_zip", "save_agent"]
