"""The rollout-engine interface, shared by the HF (CPU/debug) and vLLM (GPU) engines.

An engine turns prompt token ids into completions with the log-probability of every sampled token, and accepts
new weights from the learner through a weight transport. Logprobs are those of the *temperature-scaled*
distribution, log_softmax(logits / T), before top-k/top-p truncation: that is the quantity the learner can
recompute exactly from the same logits, so the two agree to float precision right after a sync (the check
`rollout/logprob_diff` logs every step). With T = 0 (greedy) logprobs are taken at T = 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from rlpost.sync.buckets import Bucket
from rlpost.sync.transport import SyncGroupInfo


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    seed: int | None = None
    ignore_eos: bool = False  # keep sampling past EOS to max_new_tokens: fixed-length rollouts for benchmarks

    @property
    def logprob_temperature(self) -> float:
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class Sample:
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the EOS token when the model stopped by itself
    logprobs: list[float]  # one per completion token
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)
    policy_version: int = 0  # training steps in the weights that sampled it (rlpost.pipeline sets it)


class RolloutEngine(ABC):
    @abstractmethod
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        """One Sample per prompt, in order."""

    @abstractmethod
    def score(self, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0
              ) -> list[list[float]]:
        """Logprobs of given completions (teacher forcing); the check that engine and learner agree."""

    @abstractmethod
    def init_weight_sync(self, info: SyncGroupInfo, rank: int, plan: list[Bucket]) -> None:
        """Join the sync group as receiver `rank` (>= 1) and remember the bucket plan."""

    @abstractmethod
    def receive_weights(self) -> int:
        """Receive one full set of weights from the sender; returns the number of tensors loaded."""

    def sleep(self) -> None:  # noqa: B027 - engines without sleep mode keep their memory
        """Free GPU memory (weights and cache) for a colocated learner; `wake_up` brings it back."""

    def wake_up(self, tags: list[str]) -> None:  # noqa: B027
        """Re-allocate the memory tagged `tags` ("weights", then "kv_cache" after the weights are synced)."""

    @abstractmethod
    def weights_digest(self) -> str:
        """A hash of every parameter's bytes, to prove after a sync that engine and learner hold the same."""
