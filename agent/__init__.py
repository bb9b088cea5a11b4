"""The DDPG agent (AMC) on stable-baselines3: :class:`AMCDDPG`, its noise schedule and replay buffer."""

from .buffer import EpisodeRewardBuffer
from .ddpg import ACTOR_LR, AMCDDPG, CRITIC_LR, HIDDEN
from .noise import TruncatedNormalSchedule
from .storage import load_agent, load_sb3_zip, save_agent

__all__ = ["AMCDDPG", "ACTOR_LR", "CRITIC_LR", "HIDDEN", "EpisodeRewardBuffer", "TruncatedNormalSchedule", "load_agent",
           "load_sb3_zip", "save_agent"]
