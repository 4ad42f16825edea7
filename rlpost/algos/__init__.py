"""RL algorithm math: advantages, policy losses, KL estimators, loss aggregation. Pure tensor code, no I/O."""

from rlpost.algos.advantages import ADVANTAGES, grpo_advantages
from rlpost.algos.losses import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    clipped_policy_loss,
    entropy_from_logits,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    seq_mean_token_mean,
    seq_mean_token_sum,
    token_mean,
)
from rlpost.algos.registry import Registry

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "Registry",
    "clipped_policy_loss",
    "entropy_from_logits",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "token_mean",
]
