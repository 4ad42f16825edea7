"""Reward-model training: a one-output sequence-classification head on a causal LM, trained on preference pairs.

The model is `AutoModelForSequenceClassification` with `num_labels=1` on the given folder: the causal LM's body
(loaded from its weights) and a fresh linear `score` head that Hugging Face applies to the last non-padding token
of each row. Why this class and not a hand-written head: it is what `reward.models` loads
(`rlpost.rewards.reward_model.RewardModelScorer`), so the exported folder is served as is, with the same pooling
in training and in scoring; loading, ZeRO-3 sharding, gradient checkpointing and saving need no module of ours.
The same choice as the critic's (`rlpost.learner.critic`), per sequence instead of per token.

Items come in (chosen, rejected) order like DPO's; the loss is `algo.rm_loss` (Bradley-Terry) per pair,
normalised by the mini-batch's pair count. Everything else, DeepSpeed set-up, the update loop, checkpoints and
the Hugging Face export, is `LearnerRank`'s.
"""

from __future__ import annotations

import torch

from rlpost.algos import REWARD_MODEL_LOSSES
from rlpost.experience import MiniBatch, TrainItem
from rlpost.learner.actor import Batch, LearnerRank
from rlpost.logprobs import PackedBatch, pack
from rlpost.metrics import WeightedMeans


class RewardModelRank(LearnerRank):
    prefix = "rm"

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(self.model_path, num_labels=1)
        if config.pad_token_id is None:
            config.pad_token_id = self.pad_id
        self.pad_id = config.pad_token_id  # the head finds each row's last token by this id: pad with it
        return AutoModelForSequenceClassification.from_pretrained(self.model_path, config=config,
                                                                  dtype=torch.float32)

    def _loads_reference(self) -> bool:
        return False

    def _scores(self, batch: PackedBatch) -> torch.Tensor:
        """[b] one score per right-padded row (validation keeps RM batches unpacked)."""
        out = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.logits[:, 0].float()

    def _micro_loss(self, micro: list[TrainItem], batch: Batch, mb: MiniBatch, means: WeightedMeans,
                    first_pass: bool) -> torch.Tensor:
        scores = self._scores(batch)
        per_pair, margin = REWARD_MODEL_LOSSES.get(self.cfg["algo"]["rm_loss"])(scores[0::2], scores[1::2])
        loss = self._pair_loss(per_pair, margin, mb, means, "rm")
        with torch.no_grad():
            means.add("rm/chosen_score", scores[0::2].mean(), float(len(per_pair)))
        return loss

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
        """The RM's score of every (prompt + completion) sequence. Under ZeRO-3 every rank must call this with the
        same inputs (the forward gathers parameters collectively)."""
        self.engine.eval()
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.micro):
                batch = pack(prompts[i:i + self.micro], completions[i:i + self.micro], self.pad_id).to(self.device)
                out.extend(self._scores(batch).tolist())
        return out
