"""The compression environment (gymnasium), registered as ``uniprune/Compression-v0``."""

import gymnasium

from .compression_env import REWARDS, CompressionEnv, make_tiny_env
from .embedding import FEATURES, NUM_FEATURES
from .scorer import Scorer, recalibrate_bn
from .wall import Walk, Wall

ENV_ID = "uniprune/Compression-v0"

if ENV_ID not in gymnasium.registry:
    # The default kwargs build the tiny self-contained env; pass model, data and budget to use a real one.
    gymnasium.register(id=ENV_ID, entry_point="uniprune.envs.compression_env:make_tiny_env")

__all__ = ["CompressionEnv", "Scorer", "Walk", "Wall", "ENV_ID", "FEATURES", "NUM_FEATURES", "REWARDS", "make_tiny_env", "recalibrate_bn"]
