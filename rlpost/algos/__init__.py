"""RL algorithm math: advantages, policy/value/DPO losses, KL estimators and control, reward shaping, preference
pairs, loss aggregation, off-policy corrections. Pure tensor code, no I/O."""

from rlpost.algos.advantages import (
    ADVANTAGES,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlpost.algos.losses import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    clipped_policy_loss,
    clipped_value_loss,
    dpo_loss,
    entropy_from_logits,
    gspo_policy_loss,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    seq_mean_token_mean,
    seq_mean_token_sum,
    sequence_logprob,
    token_mean,
)
from rlpost.algos.off_policy import (
    OFF_POLICY_CORRECTIONS,
    decoupled_ppo_loss,
    importance_ratio,
    importance_ratio_stats,
)
from rlpost.algos.pairs import PAIR_SELECTORS, repeat_to, select_pairs
from rlpost.algos.registry import Registry
from rlpost.algos.shaping import adaptive_kl_coef, overlong_penalty, token_level_rewards

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "OFF_POLICY_CORRECTIONS",
    "PAIR_SELECTORS",
    "POLICY_LOSSES",
    "Registry",
    "adaptive_kl_coef",
    "clipped_policy_loss",
    "clipped_value_loss",
    "decoupled_ppo_loss",
    "dpo_loss",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "gae_advantages",
    "grpo_advantages",
    "importance_ratio",
    "importance_ratio_stats",
    "gspo_policy_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "overlong_penalty",
    "reinforce_pp_advantages",
    "repeat_to",
    "rloo_advantages",
    "select_pairs",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "sequence_logprob",
    "token_level_rewards",
    "token_mean",
]
