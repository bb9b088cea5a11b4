"""AMCDDPG: AMC's noise schedule, reward assignment and baseline, learning rates, net sizes, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from uniprune.agent import AMCDDPG, EpisodeRewardBuffer, TruncatedNormalSchedule, load_agent, save_agent
from uniprune.compressors.core.errors import ConfigError
from uniprune.envs import make_tiny_env

pytestmark = pytest.mark.usefixtures("single_thread_module")


def test_noise_schedule_numbers():
    s = TruncatedNormalSchedule(sigma0=0.5, decay=0.95, warmup_episodes=100)
    assert s.sigma(0) == 0.0 and s.sigma(99) == 0.0
    assert s.sigma(100) == pytest.approx(0.5)
    assert s.sigma(101) == pytest.approx(0.475)
    assert s.sigma(110) == pytest.approx(0.5 * 0.95**10)
    rng = np.random.default_rng(0)
    # After warm-up: truncated to [0, 1] and centred near the mean for a small sigma.
    # One call per schedule point; rows are independent draws (the mean broadcasts per row).
    draws = s.sample(np.tile([0.0, 0.9], (2000, 1)), 100, rng)
    assert draws.shape == (2000, 2) and draws.min() >= 0.0 and draws.max() <= 1.0
    # mean 0 at the bound: a half-normal (sigma 0.5) cut at 1 = 2 sigma, mean 0.5 * (phi(0) - phi(2)) / (Phi(2) - 1/2)
    assert draws[:, 0].mean() == pytest.approx(0.3614, abs=0.02)
    late = s.sample(np.tile([0.3, 0.7], (2000, 1)), 190, rng)  # sigma ~ 0.005
    np.testing.assert_allclose(late.mean(axis=0), [0.3, 0.7], atol=2e-3)
    assert late.std(axis=0) == pytest.approx([0.5 * 0.95**90] * 2, rel=0.1)
    # Warm-up: uniform on [0, 1], whatever the mean.
    warm = s.sample(np.zeros((4000, 2)), 5, rng)
    np.testing.assert_allclose(warm.mean(axis=0), [0.5, 0.5], atol=0.02)
    with pytest.raises(ConfigError):
        TruncatedNormalSchedule(decay=1.5)
    floored = TruncatedNormalSchedule(sigma0=0.5, decay=0.95, warmup_episodes=10, sigma_min=0.05)
    assert floored.sigma(9) == 0.0 and floored.sigma(10) == pytest.approx(0.5)
    assert floored.sigma(50) == pytest.approx(0.5 * 0.95**40)  # 0.064: still above the floor
    assert floored.sigma(60) == pytest.approx(0.05) and floored.sigma(500) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="noise floor"):
        TruncatedNormalSchedule(sigma0=0.5, sigma_min=0.6)


def _buffer(alpha: float = 0.5) -> EpisodeRewardBuffer:
    box = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
    return EpisodeRewardBuffer(100, box, box, device="cpu", baseline_alpha=alpha)


def _play(buf: EpisodeRewardBuffer, final: float, length: int = 3) -> None:
    for t in range(length):
        done = t == length - 1
        buf.add(
            np.full((1, 2), t, np.float32), np.full((1, 2), t + 1, np.float32), np.zeros((1, 2), np.float32),
            np.array([final if done else 0.0]), np.array([done]), [{}],
        )


def test_raw_final_reward_stored_baseline_subtracted_at_update_time():
    buf = _buffer(alpha=0.5)
    for final in (0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.6):  # the sequence
        _play(buf, final)
    assert buf.size() == 21 and buf.pending == 0
    # every transition keeps its episode's raw reward: the same 0.9 is the same target, whenever it was played
    np.testing.assert_allclose(buf.rewards[:21, 0], np.repeat([0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.6], 3), atol=1e-6)
    assert buf.baseline is None  # nothing sampled yet
    # the baseline moves per sampled batch, towards the batch's mean raw reward (AMC's update_policy)
    first = buf.sample(64)
    b1 = float(first.rewards.mean()) + buf.baseline  # the first batch sets it to its own mean
    assert abs(float(first.rewards.mean())) < 1e-6 and 0.5 <= buf.baseline <= 0.9
    second = buf.sample(64)
    raw_mean = float((second.rewards + buf.baseline).mean())
    assert buf.baseline == pytest.approx(b1 + 0.5 * (raw_mean - b1), abs=1e-6)
    # within a batch, a better episode always has the higher target
    raw = (second.rewards + buf.baseline).numpy().ravel()
    order = np.argsort(raw)
    assert np.all(np.diff(second.rewards.numpy().ravel()[order]) >= -1e-6)
    # Only the last transition of an episode is terminal; held transitions are not stored yet.
    np.testing.assert_array_equal(buf.dones[:6, 0], [0, 0, 1] * 2)
    buf.add(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)), np.array([0.0]), np.array([False]), [{}])
    assert buf.size() == 21 and buf.pending == 1 and buf.discard_pending() == 1


def test_learning_rates_net_sizes_and_settings():
    env = make_tiny_env()
    agent = AMCDDPG(env=env, warmup_episodes=4, seed=0)
    assert [g["lr"] for g in agent.actor.optimizer.param_groups] == [1e-4]
    assert [g["lr"] for g in agent.critic.optimizer.param_groups] == [1e-3]
    agent.learn(total_timesteps=5 * env.num_layers)  # four warm-up episodes, then SB3's train() sets the rates
    assert agent.critic.optimizer.state  # it trained
    assert agent.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.critic.optimizer.param_groups[0]["lr"] == 1e-3
    actor_linear = [m for m in agent.actor.mu if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in actor_linear] == [(14, 300), (300, 300), (300, 2)]
    critic_linear = [m for m in agent.critic.qf0 if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in critic_linear] == [(16, 300), (300, 300), (300, 1)]
    assert len(agent.critic.q_networks) == 1
    assert (agent.gamma, agent.tau, agent.batch_size) == (1.0, 0.01, 64)
    assert agent.learning_starts == 4 * env.num_layers
    assert isinstance(agent.replay_buffer, EpisodeRewardBuffer)


def test_warmup_then_noise_and_save_load_roundtrip(tmp_path):
    env = make_tiny_env()
    agent = AMCDDPG(env=env, warmup_episodes=2, seed=0, batch_size=4)
    sigmas = []
    for ep in range(4):
        sigmas.append(agent.noise_sigma)
        agent.learn(total_timesteps=env.num_layers, reset_num_timesteps=ep == 0)
    assert sigmas == pytest.approx([0.0, 0.0, 0.5, 0.475])
    assert agent.episode == 4 and agent.replay_buffer.size() == 4 * env.num_layers
    # Training starts once the warm-up steps are in: 3 steps after episode 3, 3 after episode 4.
    params = next(iter(agent.critic.optimizer.state.values()))
    assert int(params["step"]) == 2 * env.num_layers  # Adam's own count of the critic's updates
    files = save_agent(agent, tmp_path)
    assert sorted(p.name for p in files) == ["agent.json", "agent.pt", "replay_buffer.npz"]
    loaded = load_agent(tmp_path, env=make_tiny_env(), replay_buffer=True)
    assert loaded.episode == 4 and loaded.noise_sigma == pytest.approx(0.5 * 0.95**2)
    assert loaded.replay_buffer.size() == agent.replay_buffer.size()
    assert loaded.replay_buffer.baseline == pytest.approx(agent.replay_buffer.baseline)
    assert loaded.actor.optimizer.param_groups[0]["lr"] == 1e-4
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0])
