"""The four searchers behind ``uniprune search``, sharing the env and its action wall.

Each :class:`Searcher` plays one episode per :meth:`Searcher.run_episode` call through the same
:class:`~uniprune.envs.CompressionEnv` (so every searcher's policies are clipped to the budget the same
way) and returns the env's end-of-episode result (reward, val_accuracy, latency_ratio, size_ratio,
actions). :class:`~uniprune.search.loop.SearchLoop` runs them, with the run directory and the logging.

* ``ddpg``: :class:`~uniprune.agent.AMCDDPG` (AMC);
* ``optuna``: TPE over the per-layer raw actions (2 per layer), one trial per episode; the study lives
  in ``--storage`` (SQLite in the run directory by default) so several workers can share it;
* ``random``: uniform random actions (every episode a fresh draw from ``(seed, episode)``);
* ``uniform``: one (prune, unify) for every layer: for each of a few prune/unify mixes, the least
  compression whose uniform policy meets the budget (by the latency model), one episode each;
* ``knapsack``: per-layer sensitivity and a knapsack over the latency table (:mod:`.knapsack`); its
  episodes are the knapsack's policies at the budget and a few tighter ones.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from uniprune.agent import AMCDDPG, load_agent, save_agent
from uniprune.compressors.core.errors import ConfigError, RunDirError
from uniprune.compressors.formats.run_dir import OPTUNA_DB, RunDir, read_json_object
from uniprune.envs import CompressionEnv
from uniprune.search.tensorboard import TensorBoardLogger, sb3_logger

from . import knapsack, sensitivity

SEARCHERS = ("ddpg", "optuna", "random", "uniform", "knapsack")
OPTUNA_STUDY = "uniprune-search"
UNIFORM_LEVELS = 11  # prune/unify mixes the uniform searcher sweeps at most


def play(env: CompressionEnv, choose: Callable[[int, np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Run one episode with ``choose(layer index, observation) -> raw action``; returns the env's result."""
    obs, _ = env.reset()
    for t in range(env.num_layers):
        obs, _, terminated, _, _ = env.step(np.asarray(choose(t, obs), dtype=np.float32))
    assert terminated and env.last_result is not None  # fixed-length episodes end at the last layer
    return env.last_result


def agent_policy(agent: AMCDDPG, env: CompressionEnv) -> dict[str, Any]:
    """One episode of ``agent``'s deterministic actions (no noise) on ``env``, through its wall.

    The observation is normalised per network, so an agent trained on one network (ResNet-20) can
    be run on another (ResNet-56). Returns the env's result (actions, reward, accuracy, ratios).
    """
    return play(env, lambda t, obs: agent.predict(obs, deterministic=True)[0])


class Searcher(abc.ABC):
    """One search strategy. ``run_episode(episode)`` plays 0-based episode ``episode`` and returns its result."""

    name: ClassVar[str]
    #: whether :meth:`plan` gives every episode's actions up front (they depend on no earlier reward)
    plans_ahead: ClassVar[bool] = False

    def __init__(self, env: CompressionEnv, *, seed: int, warmup: int, run_dir: Path, resume: bool) -> None:
        self.env = env
        self.seed = int(seed)
        self.warmup = int(warmup)
        self.run_dir = Path(run_dir)
        self.resume = resume
        #: where independent scoring may go (:class:`~uniprune.search.workers.ScorePool`; set by the search loop)
        self.pool: Any = None

    @abc.abstractmethod
    def run_episode(self, episode: int) -> dict[str, Any]:
        """Play one episode; returns the env's result dict."""

    def plan(self, episode: int) -> list[np.ndarray]:
        """The raw actions of ``episode`` (one per layer), for searchers that :attr:`plans_ahead`, so that episodes
        can be scored side by side (:mod:`uniprune.search.workers`)."""
        raise NotImplementedError(f"the {self.name} searcher chooses each episode from the rewards before it")

    def noise_sigma(self, episode: int) -> float:
        """Exploration noise of ``episode`` (0 for searchers without noise)."""
        return 0.0

    def in_warmup(self, episode: int) -> bool:
        """Whether ``episode`` is a random warm-up/startup episode."""
        return False

    def max_episodes(self, requested: int) -> int:
        """How many episodes this searcher will play when ``requested`` are asked for."""
        return requested

    def save(self) -> None:
        """Persist what a resumed search needs beyond the run directory's own files (default: nothing)."""
        return None

    def log_to(self, tb: TensorBoardLogger) -> None:
        """Send the searcher's own training scalars to ``tb`` (default: it has none)."""
        return None

    def close(self) -> None:
        """Release resources (databases); default: nothing to release."""
        return None


class DDPGSearcher(Searcher):
    """AMC's DDPG agent; saves ``agent.json``, ``agent.pt`` and ``replay_buffer.npz`` in the run directory (no pickle)."""

    name = "ddpg"

    def __init__(self, env: CompressionEnv, *, seed: int, warmup: int, run_dir: Path, resume: bool, episodes: int,
                 reward_baseline: str = "sample", noise: dict[str, float] | None = None) -> None:
        super().__init__(env, seed=seed, warmup=warmup, run_dir=run_dir, resume=resume)
        self.logging = False
        if resume and RunDir(self.run_dir).agent_path.is_file():
            self.agent = load_agent(self.run_dir, env=env, replay_buffer=True)
            self.agent._last_obs = None  # start a fresh episode in this process
        elif resume and RunDir(self.run_dir).state_path.is_file() and _episodes_done(self.run_dir) > 0:
            raise RunDirError(f"{self.run_dir} has episodes but no agent.json to resume the DDPG agent from; start over with --force")
        else:
            buffer_size = max(episodes * env.num_layers, 1000)
            self.agent = AMCDDPG(env=env, warmup_episodes=warmup, seed=seed, buffer_size=buffer_size,
                                 reward_baseline=reward_baseline, **(noise or {}))

    def run_episode(self, episode: int) -> dict[str, Any]:
        if self.agent.episode != episode:
            raise RunDirError(
                f"the saved agent has played {self.agent.episode} episodes but the run directory records {episode}; "
                "the run directory is inconsistent: start over with --force"
            )
        self.agent.learn(total_timesteps=self.env.num_layers, reset_num_timesteps=False, log_interval=None)
        assert self.env.last_result is not None
        if self.logging:  # SB3 recorded the losses and learning rates of this episode's updates; one step per episode
            self.agent.logger.record("train/noise_sigma", self.agent.schedule.sigma(episode))
            self.agent.logger.dump(step=episode)
        return self.env.last_result

    def log_to(self, tb: TensorBoardLogger) -> None:
        """SB3's logger into ``tb``: ``train/critic_loss``, ``train/actor_loss``, ``train/actor_learning_rate``,
        ``train/critic_learning_rate`` (once the agent trains, after warm-up) and ``train/noise_sigma``, per episode."""
        self.agent.set_logger(sb3_logger(tb))
        self.logging = True

    def noise_sigma(self, episode: int) -> float:
        return self.agent.schedule.sigma(episode)

    def in_warmup(self, episode: int) -> bool:
        return self.agent.schedule.in_warmup(episode)

    def save(self) -> None:
        save_agent(self.agent, self.run_dir)


class RandomSearcher(Searcher):
    """Uniform random raw actions, drawn from ``(seed, episode)`` so a resumed run draws the same."""

    name = "random"
    plans_ahead = True

    def run_episode(self, episode: int) -> dict[str, Any]:
        raws = self.plan(episode)
        return play(self.env, lambda t, obs: raws[t])

    def plan(self, episode: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, episode])
        return [rng.uniform(0.0, 1.0, size=self.env.wall.action_dims) for _ in range(self.env.num_layers)]

    def in_warmup(self, episode: int) -> bool:
        return True


class UniformSearcher(Searcher):
    """The same (prune, unify) for every layer; a sweep over prune/unify mixes, each just meeting the budget."""

    name = "uniform"
    plans_ahead = True

    def __init__(self, env: CompressionEnv, *, seed: int, warmup: int, run_dir: Path, resume: bool, levels: int = UNIFORM_LEVELS) -> None:
        super().__init__(env, seed=seed, warmup=warmup, run_dir=run_dir, resume=resume)
        self.candidates = uniform_candidates(env, levels)

    def max_episodes(self, requested: int) -> int:
        return min(requested, len(self.candidates))

    def run_episode(self, episode: int) -> dict[str, Any]:
        action = self.candidates[episode % len(self.candidates)]
        return play(self.env, lambda t, obs: action)

    def plan(self, episode: int) -> list[np.ndarray]:
        return [self.candidates[episode % len(self.candidates)]] * self.env.num_layers


class KnapsackSearcher(Searcher):
    """HALP-style: score every layer's options alone, then solve a knapsack over the latency table
    (:mod:`.knapsack`). The scoring runs once, before the first episode (a progress bar shows it)."""

    name = "knapsack"
    plans_ahead = True

    def __init__(self, env: CompressionEnv, *, seed: int, warmup: int, run_dir: Path, resume: bool,
                 known: Mapping[str, float] | None = None) -> None:
        super().__init__(env, seed=seed, warmup=warmup, run_dir=run_dir, resume=resume)
        self._plans: list[dict[str, tuple]] | None = None
        self._known = dict(known or {})

    def _scoring(self) -> dict[str, Any]:
        """What this run's scores depend on (:func:`~.sensitivity.scoring_key` of its ``config.json``)."""
        return sensitivity.scoring_key(read_json_object(RunDir(self.run_dir).config_path, fix="start over with --force"))

    def _own_costs(self, scoring: Mapping[str, Any]) -> dict[str, float]:
        """A resumed run's own scores, where they were scored as this run scores."""
        file = self.run_dir / sensitivity.FILE
        if not self.resume or not file.is_file():
            return {}
        data = sensitivity.read(file)
        if sensitivity.mismatch(data["scoring"], scoring):
            print(f"uniprune search: note: {file} was scored another way; scoring the layers again", file=sys.stderr)
            return {}
        return sensitivity.known_costs(data)

    def _ensure_plans(self) -> list[dict[str, tuple]]:
        if self._plans is None:
            scorer = self.env.scorer
            scoring = self._scoring()
            known = {**self._own_costs(scoring), **self._known}
            options = knapsack.env_options(self.env.wall)
            dense = scorer.score({})["val_accuracy"]
            many = self.pool.accuracies if self.pool is not None else None
            scored = knapsack.score_options(options, lambda actions: scorer.score(actions)["val_accuracy"], dense,
                                            score_many=many, known=known)
            sensitivity.write(self.run_dir / sensitivity.FILE, scored, dense, scoring)
            self._plans = knapsack.knapsack_plans(self.env.wall, scored)
        return self._plans

    def max_episodes(self, requested: int) -> int:
        return min(requested, knapsack.plan_count(self.env.wall))

    def run_episode(self, episode: int) -> dict[str, Any]:
        raws = self.plan(episode)
        return play(self.env, lambda t, obs: raws[t])

    def plan(self, episode: int) -> list[np.ndarray]:
        plans = self._ensure_plans()
        plan = plans[min(episode, len(plans) - 1)]
        return [self.env.wall.raw_action(i, plan[n]) for i, n in enumerate(self.env.layer_names)]


def uniform_candidates(env: CompressionEnv, levels: int) -> list[np.ndarray]:
    """Raw actions that compress every layer alike, just enough to meet the budget.

    For each of ``levels`` mixes ``m`` in [0, 1] (0: prune only, 1: unify only) the action is
    ``s * (1 - m, m) / max(1 - m, m)`` with the least scale ``s`` in [0, 1] whose uniform policy fits the
    budget by the latency model's whole-model prediction (bisection); where the search picks block shapes,
    once per shape (every conv in that shape). Mixes where even ``s = 1`` does not fit are dropped; if none
    fits, the maximum compression is the one candidate (the env's wall then clips the last layers).
    """
    wall = env.wall
    lm, limit = env.latency_model, wall.budget.limit_ms(wall.dense_ms)
    shape_raws = [[(k + 0.5) / len(wall.shapes)] for k in range(len(wall.shapes))] or [[]]

    def ms(raw: np.ndarray) -> float:
        return lm.predict({n: wall.layer_action(i, wall.map_action(raw, i)) for i, n in enumerate(env.layer_names)})

    found = []
    for shape_raw in shape_raws:
        for mix in np.linspace(0.0, 1.0, max(levels, 2)):
            direction = np.array([1.0 - mix, mix]) / max(1.0 - mix, mix)
            if ms(np.array([*direction, *shape_raw])) > limit:
                continue
            lo, hi = 0.0, 1.0  # invariant: scale hi fits
            while hi - lo > 1e-7:
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if ms(np.array([*(mid * direction), *shape_raw])) <= limit else (mid, hi)
            found.append(np.array([*(hi * direction), *shape_raw]))
    return found or [np.ones(wall.action_dims)]


class OptunaSearcher(Searcher):
    """TPE (Optuna) over the raw per-layer actions, through the env's wall; one trial per episode.

    ``storage``: an Optuna storage URL (``sqlite:///path.db``, ``postgresql://...``); default
    ``sqlite:///RUN/optuna.db``. Workers given the same URL share one study. The first ``warmup``
    trials are TPE's random startup trials.
    """

    name = "optuna"

    def __init__(self, env: CompressionEnv, *, seed: int, warmup: int, run_dir: Path, resume: bool, storage: str | None = None) -> None:
        super().__init__(env, seed=seed, warmup=warmup, run_dir=run_dir, resume=resume)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = storage or f"sqlite:///{(self.run_dir / OPTUNA_DB).resolve()}"
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(warmup, 1))
        try:
            self.study = optuna.create_study(
                storage=self.storage, study_name=OPTUNA_STUDY, direction="maximize", sampler=sampler, load_if_exists=True
            )
        except (ValueError, ImportError, ModuleNotFoundError) as exc:
            raise ConfigError(
                f"cannot open Optuna storage {self.storage!r}: {str(exc).splitlines()[0]}; pass a URL such as sqlite:///study.db"
            ) from None
        except Exception as exc:  # SQLAlchemy's errors (bad host, no permission) are not ours to import
            raise ConfigError(f"cannot open Optuna storage {self.storage!r}: {str(exc).splitlines()[0]}") from None

    def run_episode(self, episode: int) -> dict[str, Any]:
        trial = self.study.ask()
        wall = self.env.wall
        actions = []
        for i, name in enumerate(self.env.layer_names):
            raw = [trial.suggest_float(f"{name}/prune", 0.0, 1.0), trial.suggest_float(f"{name}/unify", 0.0, 1.0)]
            if wall.shapes:
                keys = [o.key for o in wall.options[i]]
                raw.append((keys.index(trial.suggest_categorical(f"{name}/shape", keys)) + 0.5) / len(keys))
            actions.append(np.array(raw))
        result = play(self.env, lambda t, obs: actions[t])
        trial.set_user_attr("latency_ratio", result["latency_ratio"])
        trial.set_user_attr("val_accuracy", result["val_accuracy"])
        self.study.tell(trial, result["reward"])
        return result

    def in_warmup(self, episode: int) -> bool:
        return episode < max(self.warmup, 1)


def _episodes_done(run_dir: Path) -> int:
    from uniprune.compressors.formats.fileio import read_json

    try:
        return int(read_json(RunDir(run_dir).state_path, RunDirError, "").get("episodes", 0))
    except (RunDirError, AttributeError, TypeError, ValueError, OverflowError):
        return 0


def make_searcher(
    name: str, env: CompressionEnv, *, seed: int, warmup: int, run_dir: Path, resume: bool, episodes: int, storage: str | None = None,
    reward_baseline: str = "sample", noise: dict[str, float] | None = None, known: Mapping[str, float] | None = None,
) -> Searcher:
    """The searcher called ``name`` (one of :data:`SEARCHERS`) on ``env``; ``noise``: DDPG's ``sigma0``,
    ``sigma_decay``, ``sigma_min`` (:class:`~uniprune.agent.noise.TruncatedNormalSchedule`); ``known``: the
    knapsack's sensitivity scores from an earlier run (:func:`~.sensitivity.costs_from`)."""
    common: dict[str, Any] = {"seed": seed, "warmup": warmup, "run_dir": run_dir, "resume": resume}
    if name == "ddpg":
        return DDPGSearcher(env, episodes=episodes, reward_baseline=reward_baseline, noise=noise, **common)
    if name == "optuna":
        return OptunaSearcher(env, storage=storage, **common)
    if name == "random":
        return RandomSearcher(env, **common)
    if name == "uniform":
        return UniformSearcher(env, **common)
    if name == "knapsack":
        return KnapsackSearcher(env, known=known, **common)
    raise ConfigError(f"unknown searcher {name!r}; choose one of {', '.join(SEARCHERS)}")
