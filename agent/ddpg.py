"""DDPG as AMC (He et al. 2018) uses it, as a small subclass of stable-baselines3's DDPG.

What differs from SB3's defaults, and where:

* exploration (:meth:`AMCDDPG._sample_action`): ``warmup_episodes`` of uniform random actions, then
  truncated-normal noise around the actor's action, sigma 0.5 x 0.95 per episode
  (:class:`~uniprune.agent.noise.TruncatedNormalSchedule`);
* rewards (:class:`~uniprune.agent.buffer.EpisodeRewardBuffer`): each transition gets its episode's
  final reward minus a moving-average baseline;
* separate learning rates for actor (1e-4) and critic (1e-3) (:meth:`_update_learning_rate`; SB3 uses
  one for both);
* gamma 1, tau 0.01, batch 64, actor and critic 300-300; learning after warm-up, one gradient step per
  transition, done at the end of each episode (AMC updates once per step after warm-up).

One SB3 "episode" is one pass over the network's compressible layers, so ``learning_starts`` is
``warmup_episodes * episode_length`` steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG
from uniprune.compressors.core.errors import ConfigError

from .buffer import EpisodeRewardBuffer
from .noise import TruncatedNormalSchedule

ACTOR_LR = 1e-4
CRITIC_LR = 1e-3
HIDDEN = (300, 300)


class AMCDDPG(DDPG):
    """DDPG with AMC's exploration, reward assignment and hyperparameters.

    :param env: the environment (a :class:`~uniprune.envs.CompressionEnv`, or any env with a Box action
        space and fixed-length episodes).
    :param warmup_episodes: episodes (>= 0) of uniform random actions before the actor acts and learns.
    :param episode_length: steps per episode (the number of compressible layers); read from the env's
        ``num_layers`` when not given.
    :param actor_lr: Adam learning rate of the actor (> 0; AMC: 1e-4).
    :param critic_lr: Adam learning rate of the critic (> 0; AMC: 1e-3).
    :param sigma0: noise scale (> 0, in action units) at the first episode after warm-up.
    :param sigma_decay: noise decay per episode after warm-up, in (0, 1].
    :param sigma_min: the noise scale's floor after warm-up, in [0, sigma0] (AMC: 0, pure decay).
    :param baseline_alpha: moving-average step of the reward baseline, in (0, 1].
    :param reward_baseline: ``"sample"`` (AMC: subtracted per sampled batch) or ``"store"`` (the earlier buffer:
        frozen into each transition when its episode ends; for comparison), see :class:`EpisodeRewardBuffer`.
    :param hidden: hidden layer widths of both actor and critic.
    :param tau: soft target update coefficient in (0, 1]. :param gamma: discount in [0, 1] (AMC: 1).
    :param batch_size: minibatch size (>= 1). :param buffer_size: replay capacity in transitions.
    :param seed: seed for networks, replay sampling and exploration. Other keywords go to SB3's DDPG.
    """

    def __init__(
        self,
        policy: Any = "MlpPolicy",
        env: Any = None,
        *,
        warmup_episodes: int = 100,
        episode_length: int | None = None,
        actor_lr: float = ACTOR_LR,
        critic_lr: float = CRITIC_LR,
        sigma0: float = 0.5,
        sigma_decay: float = 0.95,
        sigma_min: float = 0.0,
        baseline_alpha: float = 0.5,
        reward_baseline: str = "sample",
        hidden: tuple[int, ...] = HIDDEN,
        tau: float = 0.01,
        gamma: float = 1.0,
        batch_size: int = 64,
        buffer_size: int = 100_000,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        verbose: int = 0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if actor_lr <= 0 or critic_lr <= 0:
            raise ConfigError(f"learning rates must be > 0, got actor {actor_lr}, critic {critic_lr}")
        if episode_length is None:
            episode_length = _episode_length(env)
        if episode_length < 1:
            raise ConfigError(f"episode_length must be >= 1, got {episode_length}")
        #: what rebuilds this agent (agent/storage.py writes it as JSON; never a pickle)
        self.settings = {"warmup_episodes": int(warmup_episodes), "actor_lr": float(actor_lr), "critic_lr": float(critic_lr),
                         "sigma0": float(sigma0), "sigma_decay": float(sigma_decay), "sigma_min": float(sigma_min),
                         "baseline_alpha": float(baseline_alpha), "reward_baseline": reward_baseline,
                         "hidden": [int(h) for h in hidden], "tau": float(tau), "gamma": float(gamma),
                         "batch_size": int(batch_size), "buffer_size": int(buffer_size), "seed": seed}
        self.actor_lr = float(actor_lr)
        self.critic_lr = float(critic_lr)
        self.episode_length = int(episode_length)
        self.schedule = TruncatedNormalSchedule(sigma0, sigma_decay, warmup_episodes, sigma_min=sigma_min)
        self.explore_rng = np.random.default_rng(seed)
        policy_kwargs = {"net_arch": {"pi": list(hidden), "qf": list(hidden)}}
        policy_kwargs.update(kwargs.pop("policy_kwargs", None) or {})
        super().__init__(
            policy,
            env,
            learning_rate=self.critic_lr,
            buffer_size=buffer_size,
            learning_starts=warmup_episodes * self.episode_length,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=None,
            replay_buffer_class=EpisodeRewardBuffer,
            replay_buffer_kwargs={"baseline_alpha": baseline_alpha, "baseline_at": reward_baseline},
            policy_kwargs=policy_kwargs,
            seed=seed,
            device=device,
            verbose=verbose,
            _init_setup_model=_init_setup_model,
            **kwargs,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        self._set_learning_rates([self.actor.optimizer, self.critic.optimizer])

    def _set_learning_rates(self, optimizers: list[torch.optim.Optimizer]) -> None:
        for opt in optimizers:
            lr = self.actor_lr if opt is self.actor.optimizer else self.critic_lr
            for group in opt.param_groups:
                group["lr"] = lr

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        """Set the actor's and the critic's own learning rates (SB3 would give both one rate)."""
        self._set_learning_rates(optimizers if isinstance(optimizers, list) else [optimizers])
        if hasattr(self, "_logger"):  # set up by learn(); absent when called before it
            self.logger.record("train/actor_learning_rate", self.actor_lr)
            self.logger.record("train/critic_learning_rate", self.critic_lr)

    @property
    def episode(self) -> int:
        """Completed episodes (0-based index of the episode in progress)."""
        return int(self._episode_num)

    @property
    def noise_sigma(self) -> float:
        """The noise scale of the episode in progress (0 during warm-up)."""
        return self.schedule.sigma(self.episode)

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """AMC's exploration: uniform in warm-up, else truncated normal around the actor's action."""
        low, high = self.action_space.low, self.action_space.high
        if self.schedule.in_warmup(self.episode):
            action = self.explore_rng.uniform(low, high, size=(n_envs, *low.shape))
        else:
            mean, _ = self.predict(self._last_obs, deterministic=True)
            unit = (np.asarray(mean) - low) / (high - low)
            noisy = self.schedule.sample(unit, self.episode, self.explore_rng)
            action = low + noisy * (high - low)
        action = np.asarray(action, dtype=np.float32)
        return action, self.policy.scale_action(action)


def _episode_length(env: Any) -> int:
    """Steps per episode of ``env`` (a gymnasium env or an SB3 VecEnv) from its ``num_layers``."""
    if env is None or isinstance(env, str):
        return 1
    if hasattr(env, "get_attr"):
        return int(env.get_attr("num_layers")[0])
    unwrapped = getattr(env, "unwrapped", env)
    if not hasattr(unwrapped, "num_layers"):
        raise ConfigError("pass episode_length: the environment has no 'num_layers' attribute")
    return int(unwrapped.num_layers)
