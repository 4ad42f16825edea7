"""Rewards: user plug-ins loaded by path or module (`loader`), run in killable worker processes (`pool`) with
per-item and per-batch timeouts, checked by a dry call at start-up and combined into weighted totals
(`manager`); reward models served by Ray actors (`reward_model`)."""

from rlpost.rewards.loader import load_reward_fn, reward_label
from rlpost.rewards.manager import RewardManager, RewardResult
from rlpost.rewards.pool import CallResult, ProcessPool

__all__ = ["CallResult", "ProcessPool", "RewardManager", "RewardResult", "load_reward_fn", "reward_label"]
