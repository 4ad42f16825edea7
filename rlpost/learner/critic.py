"""PPO's critic: V(s_t) for every completion token, trained in its own DeepSpeed group (`critic.*`).

The model is `AutoModelForTokenClassification` with `num_labels=1` on the policy's checkpoint: the policy's
transformer body (loaded from its weights) with a fresh linear head giving one number per position; the LM head is
dropped. Why this and not a causal LM plus a hand-written head: it is the standard Hugging Face class for one
output per token, so loading, ZeRO-3 sharding, gradient checkpointing and saving work unmodified with no module
of ours to keep in step with them (veRL's critic makes the same choice). The cost: the architecture needs a
`*ForTokenClassification` class (Llama, Qwen2, Mistral, Gemma, Phi, ... have one). The head's dropout is set to
0, because values must be a function of the state alone (Hugging Face defaults it to 0.1).

Values are aligned like logprobs (`rlpost.logprobs`): entry t of the [B, L-1] output comes from the
position that predicts completion token t, i.e. it is the value of the state before that token is sampled, which
is what GAE's V(s_t) is.

Everything else, DeepSpeed set-up, the epochs x mini-batches x micro-batches update loop, loss normalisation, is
`LearnerRank`'s; this class only swaps the model, the learning rate, the experience and the loss.
"""

from __future__ import annotations

import torch

from rlpost.algos import clipped_value_loss, masked_mean, token_mean
from rlpost.experience import MiniBatch, TrainItem
from rlpost.learner.actor import Batch, LearnerRank
from rlpost.logprobs import repack
from rlpost.metrics import WeightedMeans
from rlpost.packing import PackedSequences


class CriticRank(LearnerRank):
    prefix = "critic"
    group = "critic"

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForTokenClassification

        config = AutoConfig.from_pretrained(self.model_path, num_labels=1, classifier_dropout=0.0)
        return AutoModelForTokenClassification.from_pretrained(self.model_path, config=config, dtype=torch.float32)

    def _lr(self) -> float:
        return self.cfg["critic"]["lr"]

    def _loads_reference(self) -> bool:
        return False

    def _values(self, batch: Batch) -> torch.Tensor:
        """[b, L-1-start] values, aligned with the batch's completion mask like `forward_logits`' logits."""
        if isinstance(batch, PackedSequences):
            out = self.engine(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
            return batch.rows(out.logits[0, batch.logit_index, 0].float())
        out = self.engine(input_ids=batch.input_ids, use_cache=False)  # right-padded: no mask (`forward_logits`)
        return out.logits[:, batch.start:-1, 0].float()

    def experience(self, prompts: list[list[int]], completions: list[list[int]], old: bool = False
                   ) -> dict[str, list[list[float]]]:
        """The values of this rank's share of the batch, per completion token."""
        self.engine.eval()
        return {"values": self._per_token(self._values, prompts, completions)}

    def _micro_loss(self, micro: list[TrainItem], batch: Batch, mb: MiniBatch, means: WeightedMeans,
                    first_pass: bool) -> torch.Tensor:
        """Clipped value loss against the GAE returns, a token mean over the mini-batch (a regression has no
        reason to weigh sequences other than by their tokens)."""
        completion = batch.completion_mask
        in_loss = torch.tensor([float(it.in_loss) for it in micro], device=self.device).unsqueeze(-1)
        mask = completion * in_loss
        values = self._values(batch)
        old = repack([it.values for it in micro], completion)
        returns = repack([it.returns for it in micro], completion)
        per_token, clip_frac = clipped_value_loss(values, old, returns, mask, self.cfg["critic"]["value_clip"])
        num_tokens, num_seqs = self._normalisers(mb)
        loss = token_mean(per_token, mask, num_tokens, num_seqs)
        with torch.no_grad():
            n = float(mask.sum())
            means.add("critic/value_loss", masked_mean(per_token, mask), n)
            means.add("critic/clip_frac", clip_frac, n)
            means.add("critic/values", masked_mean(values, mask), n)
            means.add("critic/returns", masked_mean(returns, mask), n)
        return loss
