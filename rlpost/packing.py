"""Sequence packing and token-budget micro-batches: forwards without padding tokens.

A micro-batch of B sequences (prompt + completion) becomes one row of N = sum of their lengths tokens, with
`position_ids` restarting at 0 at each sequence and no attention mask. Hugging Face transformers (5.x) reads that
layout as packed sequences: `masking_utils.find_packed_sequence_indices` finds the boundaries where the position
ids do not step by 1, and the sdpa/eager paths build a block-diagonal causal mask from them (attention never
crosses sequences); flash-attention-2 turns the same position ids into varlen cu_seqlens. Llama, Qwen2 and the
other models built on `create_causal_mask` all support it. RoPE rotates by the position ids, so every sequence
sees the positions it would see alone. The cost on sdpa/eager: the mask is a dense [N, N] boolean per forward
(64 MiB at N = 8192), which bounds a sensible budget there; flash-attention has no such mask.

The LM head runs only on the K positions that predict a completion token (`logits_to_keep` as an index tensor),
so the logits are [K, V]. Everything downstream (losses, masks, per-token lists from the experience phase) keeps
the padded [B, T] layout of `rlpost.logprobs.pack`: `PackedSequences.rows` scatters the K per-token values into
it. That layout is a few floats per token, while the forward, the [K, V] logits and their softmax are where the
time and memory go, and they see no padding.

Token-budget micro-batches: `token_budget_chunks` cuts a list of sequences, in order, into consecutive chunks of
at most `max_tokens` tokens each (a longer sequence is a chunk of its own).

Padded micro-batches: `length_order` sorts a rank's sequences by length before they are cut into
`micro_batch_size` groups, so each group is padded to a length near its own sequences' rather than to the longest
of a random draw. A rollout batch's lengths spread widely (GSM8K on Qwen2.5-Coder-0.5B: completions of ~180-280
tokens on average and the longest at the 512-token limit, every step), so in arrival order nearly every micro-batch
holds one long sequence and is padded to it (issue 16 counted 92k real tokens in 164k slots in one such step).
The order changes nothing else: the loss of a mini-batch is normalised over the whole mini-batch, whatever its
split into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlpost.logprobs import pack


@dataclass
class PackedSequences:
    input_ids: Tensor  # [1, N] long: the sequences back to back, no padding
    position_ids: Tensor  # [1, N] long: 0, 1, ... within each sequence
    logit_index: Tensor  # [K] long: the positions whose logits predict a completion token, in sequence order
    completion_mask: Tensor  # [B, T] float: `rlpost.logprobs.pack`'s completion mask, the loss layout

    @property
    def targets(self) -> Tensor:
        """[K]: the completion tokens the kept logits predict."""
        return self.input_ids[0, self.logit_index + 1]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    def forward_logits(self, model: torch.nn.Module) -> Tensor:
        """[K, V] logits at the completion-predicting positions (the LM head runs on those only)."""
        return model(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False,
                     logits_to_keep=self.logit_index).logits[0]

    def rows(self, values: Tensor) -> Tensor:
        """Per-completion-token values [K] -> the [B, T] loss layout (0 elsewhere); differentiable."""
        out = torch.zeros(self.completion_mask.shape, dtype=values.dtype, device=values.device)
        return out.index_put((*self.completion_mask.bool().nonzero(as_tuple=True),), values)

    def to(self, device: torch.device | str) -> PackedSequences:
        return PackedSequences(self.input_ids.to(device), self.position_ids.to(device), self.logit_index.to(device),
                               self.completion_mask.to(device))


def pack_sequences(prompts: list[list[int]], completions: list[list[int]]) -> PackedSequences:
    """Concatenate prompt + completion of every sequence into one row (see the module docstring). Logits at
    position t predict token t+1, so sequence i's completion tokens are predicted from its offset + len(prompt) - 1
    on, one position each."""
    ids, positions, index, offset = [], [], [], 0
    for p, c in zip(prompts, completions, strict=True):
        ids.extend(p + c)
        positions.extend(range(len(p) + len(c)))
        index.extend(range(offset + len(p) - 1, offset + len(p) - 1 + len(c)))
        offset += len(p) + len(c)
    return PackedSequences(torch.tensor([ids]), torch.tensor([positions]), torch.tensor(index, dtype=torch.long),
                           pack(prompts, completions, 0).completion_mask)


def token_budget_chunks(lengths: list[int], max_tokens: int, min_chunks: int = 1) -> list[range]:
    """Consecutive index ranges over sequences of `lengths` tokens, each at most `max_tokens` tokens (a longer
    sequence alone), greedily in order. Then, while there are fewer than `min_chunks` (ranks that must run the same
    number of forwards agree on the largest count), the chunk with the most tokens is halved by sequences; a
    chunk of one sequence cannot be halved, so at most len(lengths) chunks."""
    chunks: list[range] = []
    start, tokens = 0, 0
    for i, n in enumerate(lengths):
        if i > start and tokens + n > max_tokens:
            chunks.append(range(start, i))
            start, tokens = i, 0
        tokens += n
    if lengths:
        chunks.append(range(start, len(lengths)))
    while len(chunks) < min(min_chunks, len(lengths)):
        splittable = [c for c in chunks if len(c) > 1]
        big = max(splittable, key=lambda c: sum(lengths[i] for i in c))
        k, mid = chunks.index(big), big.start + len(big) // 2
        chunks[k:k + 1] = [range(big.start, mid), range(mid, big.stop)]
    return chunks


def length_order(lengths: list[int], unit: int = 1) -> list[int]:
    """Indices of `lengths`, shortest first (a stable sort: ties keep their order), moving `unit` consecutive
    items together (a DPO pair: chosen and rejected stay side by side) ordered by the longest of them. For
    padded micro-batches (module docstring); `len(lengths)` must be a multiple of `unit`."""
    if len(lengths) % unit:
        raise ValueError(f"{len(lengths)} lengths do not split into units of {unit}")
    starts = sorted(range(0, len(lengths), unit), key=lambda s: max(lengths[s:s + unit]))
    return [s + k for s in starts for k in range(unit)]
