"""Off-policy correction: importance weights between the policy that sampled (the rollout engine, "behaviour")
and the learner's policy that the PPO ratio is taken against ("proximal", the learner's old logprobs).

Why: even with identical weights, vLLM and the learner compute different token probabilities (other kernels,
precision, batch shapes), and with stale samples the behaviour policy is an older one. The PPO ratio
pi_theta / pi_old with pi_old = the learner's own old logprobs is then not the ratio to the distribution the tokens
came from. The corrections here reweight each token by rho = pi_prox / pi_behav = exp(proximal - behaviour):

- `tis` (truncated importance sampling, Yao et al. 2025, "Your efficient RL framework secretly brings you
  off-policy RL training"): weight min(rho, cap). Every token keeps contributing, a rare huge ratio is bounded.
- `mis` (masked importance sampling): weight rho where rho <= cap, and the token is dropped from the loss where
  rho > cap. Token-level (not sequence-level): a token is masked on its own ratio, the rest of its sequence stays.
  A masked token still counts in the loss normaliser (the driver's global token count), like any zero-loss token,
  so masking never changes the weight of the other tokens.
- `none`: weight 1, nothing masked.

The weight is a constant (detached): it scales each token's policy-gradient term, it is not optimised.

`decoupled_ppo_loss` puts it together as AReaL's decoupled PPO objective (Fu et al., arXiv 2505.24298):
the behaviour policy only enters through this weight, the proximal policy is the centre of the clip:
    -rho * min(r A, clip(r, 1 - eps_low, 1 + eps_high) A),  r = pi_theta / pi_prox.
AReaL's own default caps rho by masking (our `mis`); `tis` is the truncated alternative.

Shapes as in `rlpost.algos.losses`: [B, T] per token, `mask` 1 on completion tokens that count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlpost.algos.losses import POLICY_LOSSES, masked_mean
from rlpost.algos.registry import Registry

OFF_POLICY_CORRECTIONS = Registry("off-policy correction", "algo.off_policy_correction")

# The log ratio is clamped before exp so a token the engine found near-impossible cannot give inf (exp(20) ~ 5e8
# is far beyond any sensible cap, so the clamp changes no capped weight).
_MAX_LOG_RATIO = 20.0


def importance_ratio(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> Tensor:
    """rho = exp(proximal - behaviour) per token, detached; 1 at masked positions (padding logprobs may be
    arbitrary)."""
    log_ratio = (proximal_logprobs - behaviour_logprobs).detach().clamp(max=_MAX_LOG_RATIO)
    return torch.where(mask.bool(), log_ratio.exp(), torch.ones_like(log_ratio))


@OFF_POLICY_CORRECTIONS.register("none")
def no_correction(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float
                  ) -> tuple[Tensor, Tensor]:
    """Weight 1 everywhere, the mask unchanged."""
    return torch.ones_like(proximal_logprobs), mask.bool()


@OFF_POLICY_CORRECTIONS.register("tis")
def truncated_importance_weights(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float
                                 ) -> tuple[Tensor, Tensor]:
    """TIS: (weight min(rho, cap), the mask unchanged)."""
    return importance_ratio(proximal_logprobs, behaviour_logprobs, mask).clamp(max=cap), mask.bool()


@OFF_POLICY_CORRECTIONS.register("mis")
def masked_importance_weights(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float
                              ) -> tuple[Tensor, Tensor]:
    """MIS, per token: (weight rho where rho <= cap else 0, the mask without the tokens whose rho > cap)."""
    rho = importance_ratio(proximal_logprobs, behaviour_logprobs, mask)
    keep = mask.bool() & (rho <= cap)
    return torch.where(keep, rho, torch.zeros_like(rho)), keep


def decoupled_ppo_loss(logprobs: Tensor, proximal_logprobs: Tensor, behaviour_logprobs: Tensor, advantages: Tensor,
                       mask: Tensor, clip_low: float, clip_high: float, clip_c: float = 0.0, cap: float = 2.0,
                       correction: str = "mis", policy_loss: str = "clipped") -> tuple[Tensor, Tensor]:
    """AReaL's decoupled PPO loss per token (see the module docstring): the policy loss `policy_loss` with the
    proximal logprobs as its ratio's denominator, on the tokens the correction keeps, times the correction's
    weight. Returns (per-token loss, 0 where masked or dropped; the policy loss's clip fraction)."""
    weight, keep = OFF_POLICY_CORRECTIONS.get(correction)(proximal_logprobs, behaviour_logprobs, mask, cap)
    per_token, clip_frac = POLICY_LOSSES.get(policy_loss)(logprobs, proximal_logprobs, advantages, keep,
                                                          clip_low, clip_high, clip_c)
    return weight * per_token, clip_frac


@torch.no_grad()
def importance_ratio_stats(proximal_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float
                           ) -> dict[str, Tensor]:
    """Over the masked-in tokens: the ratio's mean and max, and the share of tokens whose ratio exceeds the cap
    (truncated by tis, dropped by mis). Zeros for an empty mask."""
    keep = mask.bool()
    rho = importance_ratio(proximal_logprobs, behaviour_logprobs, mask)
    return {"ratio_mean": masked_mean(rho, keep),
            "ratio_max": rho[keep].max() if keep.any() else torch.zeros(()),
            "capped_frac": masked_mean((rho > cap).float(), keep)}
