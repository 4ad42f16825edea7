"""Reward functions: user plug-ins loaded by path or module (`loader`), run in killable worker processes
(`pool`) with per-item timeouts, and combined into weighted totals (`manager`)."""

from rlpost.rewards.loader import load_reward_fn, reward_label
from rlpost.rewards.manager import RewardManager, RewardResult
from rlpost.rewards.pool import CallResult, ProcessPool

__all__ = ["CallResult", "ProcessPool", "RewardManager", "RewardResult", "load_reward_fn", "reward_label"]
