"""The DDPG agent (AMC) on stable-baselines3."""
