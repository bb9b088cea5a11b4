"""The DDPG agent (AMC) on stable-baselines3: :class:`AMCDDPG`, its noise schedule and replay buffer."""

from .buffer import EpisodeRewardBuffer
from .ddpg import ACTOR_LR, AMCDDPG, CRITIC_LR, HIDDEN
from .noise import TruncatedNormalSchedule

__all__ = ["AMCDDPG", "ACTOR_LR", "CRITIC_LR", "HIDDEN", "EpisodeRewardBuffer", "TruncatedNormalSchedule"]
