"""Sequence packing: the pure layout functions by hand, then the tiny model's loss and gradients packed (and cut
into token-budget micro-batches) against the padded batch, in fp32."""

import pytest
import torch
from helpers import close

from rlpost.algos import clipped_policy_loss, token_mean
from rlpost.logprobs import pack, repack, token_logprobs
from rlpost.packing import length_order, pack_sequences, token_budget_chunks


def test_pack_sequences_layout():
    # Sequence 0: prompt [5, 6], completion [7]; sequence 1: prompt [8], completion [9, 10].
    packed = pack_sequences([[5, 6], [8]], [[7], [9, 10]])
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2]]
    # Position 1 (token 6) predicts 7; positions 3 and 4 (tokens 8, 9) predict 9 and 10.
    assert packed.logit_index.tolist() == [1, 3, 4]
    assert packed.targets.tolist() == [7, 9, 10]
    assert packed.num_tokens == 6
    # The loss layout is the padded one: start = shortest prompt - 1 = 0, T = 3 - 1 - 0 = 2.
    assert packed.completion_mask.tolist() == pack([[5, 6], [8]], [[7], [9, 10]], 0).completion_mask.tolist()
    assert packed.completion_mask.tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_rows_scatter_in_sequence_order():
    packed = pack_sequences([[5, 6], [8]], [[7], [9, 10]])
    close(packed.rows(torch.tensor([1.0, 2.0, 3.0])), [[0.0, 1.0], [2.0, 3.0]])
    # The inverse of repack's layout: per-sequence lists land where rows() puts the values.
    close(repack([[1.0], [2.0, 3.0]], packed.completion_mask), packed.rows(torch.tensor([1.0, 2.0, 3.0])))


def test_token_budget_chunks():
    assert token_budget_chunks([3, 4, 2, 5], 7) == [range(0, 2), range(2, 4)]  # 3+4, 2+5
    assert token_budget_chunks([3, 4, 2, 5], 6) == [range(0, 1), range(1, 3), range(3, 4)]  # 3 | 4+2 | 5
    assert token_budget_chunks([9, 1], 4) == [range(0, 1), range(1, 2)]  # a long sequence stands alone
    assert token_budget_chunks([], 4) == []
    # min_chunks: the chunk with the most tokens (2+2+2+2) is halved until there are 3.
    assert token_budget_chunks([2, 2, 2, 2, 1], 8, min_chunks=3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert len(token_budget_chunks([5, 5], 100, min_chunks=9)) == 2  # never more than one per sequence


# ---- the model: packed == padded ------------------------------------------------------------------------------

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11, 12, 13]]
COMPLETIONS = [[14, 15, 16, 17], [18], [19, 20, 21], [22, 23, 24, 25, 26, 27]]
ADVANTAGES = [1.0, -0.5, 2.0, 0.25]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def pg_loss(model, batch, items, num_tokens, advantages=ADVANTAGES):
    """The learner's policy loss of one micro-batch (`LearnerRank._pg_loss`): token logprobs in the padded loss
    layout, a PPO-clip loss with the first update's own logprobs as old ones, token-mean over the global count."""
    logprobs = batch.rows(token_logprobs(batch.forward_logits(model), batch.targets))
    mask = batch.completion_mask
    adv = repack([[advantages[i]] * len(COMPLETIONS[i]) for i in items], mask)
    per_token, _ = clipped_policy_loss(logprobs, logprobs.detach(), adv, mask, 0.2, 0.2)
    return token_mean(per_token, mask, num_tokens), logprobs


def loss_and_grads(model, make_batch, chunks, advantages=ADVANTAGES):
    model.zero_grad()
    total_tokens = sum(len(c) for c in COMPLETIONS)
    loss, logprobs = 0.0, []
    for chunk in chunks:
        items = list(chunk)
        batch = make_batch([PROMPTS[i] for i in items], [COMPLETIONS[i] for i in items])
        micro, lp = pg_loss(model, batch, items, total_tokens, advantages)
        micro.backward()
        loss += float(micro.detach())
        logprobs += [row[m.bool()].tolist() for row, m in zip(lp.detach(), batch.completion_mask, strict=True)]
    return loss, logprobs, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_padded_forward_needs_no_attention_mask(model):
    """`forward_logits` runs the right-padded batch without an attention mask: the logits it keeps are the
    completion-predicting positions only, contiguous, and at every real target the masked forward's, bit for bit
    (causal attention never lets a real position see a later padding one); the loss's gradient is the masked
    forward's too, since the padding positions' finite values are masked out of it."""
    batch = pack(PROMPTS, COMPLETIONS, 0)
    length = batch.input_ids.shape[1]

    def masked_logits():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return out[:, batch.start:-1]

    logits = batch.forward_logits(model)
    assert logits.shape[:2] == batch.completion_mask.shape == (4, length - 1 - batch.start) and logits.is_contiguous()
    real = batch.attention_mask[:, batch.start + 1:].bool()  # the targets that are tokens, not padding
    assert torch.equal(logits[real], masked_logits()[real])
    grads = []
    for forward in (batch.forward_logits, lambda _: masked_logits()):
        model.zero_grad()
        (token_logprobs(forward(model), batch.targets) * batch.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    close(grads[0], grads[1], atol=1e-6 * float(grads[1].abs().max()))


def test_packed_loss_and_gradients_equal_padded(model):
    # At the first update the ratio is 1 and the loss is -mean(A) whatever the logprobs; the logprobs and the
    # gradients are what packing could get wrong (attention across sequences moves them by ~100%).
    padded = loss_and_grads(model, lambda p, c: pack(p, c, 0), [range(4)])
    lengths = [len(p) + len(c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    chunks = token_budget_chunks(lengths, 16)  # 7+3 | 8 | 9: three packed micro-batches
    assert len(chunks) == 3
    for packed in (loss_and_grads(model, pack_sequences, [range(4)]), loss_and_grads(model, pack_sequences, chunks)):
        close(packed[0], padded[0], atol=1e-6)
        for got, want in zip(packed[1], padded[1], strict=True):
            close(got, want, atol=1e-5)
        assert padded[2].keys() == packed[2].keys()
        for name, grad in padded[2].items():  # fp32 sums in another order: equal to 1e-5 of the largest entry
            close(packed[2][name], grad, atol=1e-5 * float(grad.abs().max()))
    assert any(g.abs().sum() > 0 for g in padded[2].values())


def test_skipping_zero_advantage_sequences_keeps_loss_and_gradients(model):
    # algo.skip_tied_groups: sequences 1 and 3 belong to tied groups (advantage 0). Left out of the forward but
    # kept in the token count, the loss and every gradient are those of the whole batch.
    advantages = [1.0, 0.0, 2.0, 0.0]
    whole = loss_and_grads(model, lambda p, c: pack(p, c, 0), [range(4)], advantages)
    skipped = loss_and_grads(model, lambda p, c: pack(p, c, 0), [[0, 2]], advantages)
    close(skipped[0], whole[0], atol=1e-6)
    for name, grad in whole[2].items():
        close(skipped[2][name], grad, atol=1e-5 * float(grad.abs().max()))
    assert any(g.abs().sum() > 0 for g in whole[2].values())


def test_packed_attention_does_not_cross_sequences(model):
    # A sequence's logprobs are the same alone and packed behind another one.
    alone = pack_sequences([PROMPTS[1]], [COMPLETIONS[1]])
    behind = pack_sequences(PROMPTS[:2], COMPLETIONS[:2])
    with torch.no_grad():
        lp_alone = token_logprobs(alone.forward_logits(model), alone.targets)
        lp_behind = token_logprobs(behind.forward_logits(model), behind.targets)
    close(lp_behind[len(COMPLETIONS[0]):], lp_alone, atol=1e-5)


def test_learner_token_budget_micro_batches_keep_dpo_pairs():
    from rlpost.experience import TrainItem
    from rlpost.learner.actor import LearnerRank

    rank = LearnerRank.__new__(LearnerRank)  # only the micro-batch cutting: no model, no DeepSpeed
    rank.packed, rank.world_size, rank.device = True, 1, torch.device("cpu")
    items = [TrainItem([1] * 3, [2] * n, [0.0] * n) for n in (2, 3, 2, 2, 4, 1)]  # 5, 6, 5, 5, 7, 4 tokens
    rank.cfg = {"learner": {"max_tokens_per_micro": 12}, "algo": {"objective": "pg"}}
    assert [len(m) for m in rank._micro_batches(items)] == [2, 2, 2]  # 5+6 | 5+5 | 7+4
    rank.cfg["algo"]["objective"] = "dpo"  # pairs of 11, 10, 11 tokens: one pair per micro-batch, never split
    assert [len(m) for m in rank._micro_batches(items)] == [2, 2, 2]
    rank.cfg["learner"]["max_tokens_per_micro"] = 21  # 11 + 10 | 11
    assert [len(m) for m in rank._micro_batches(items)] == [4, 2]


def test_length_order():
    assert length_order([5, 2, 9, 2]) == [1, 3, 0, 2]  # shortest first; the two 2s keep their order
    # Units of 2 (DPO pairs) move together, ordered by their longer member: max 5, 9, 1 -> units 2, 0, 1.
    assert length_order([5, 2, 9, 2, 1, 1], unit=2) == [4, 5, 0, 1, 2, 3]
    assert length_order([]) == []
    with pytest.raises(ValueError, match="units of 2"):
        length_order([1, 2, 3], unit=2)


def _padded_rank(objective: str = "pg"):
    from rlpost.learner.actor import LearnerRank

    rank = LearnerRank.__new__(LearnerRank)  # only the micro-batch cutting: no model, no DeepSpeed
    rank.packed, rank.micro, rank.world_size, rank.device, rank.pad_id = False, 2, 1, torch.device("cpu"), 0
    rank.cfg = {"learner": {"max_tokens_per_micro": 0}, "algo": {"objective": objective}}
    return rank


def test_learner_padded_micro_batches_are_sorted_by_length():
    from rlpost.experience import TrainItem

    items = [TrainItem([1] * 3, [2] * n, [0.0] * n) for n in (2, 3, 2, 2, 4, 1)]  # 5, 6, 5, 5, 7, 4 tokens
    ids = {id(it): i for i, it in enumerate(items)}
    micros = _padded_rank()._micro_batches(items)
    assert [[ids[id(it)] for it in m] for m in micros] == [[5, 0], [2, 3], [1, 4]]  # 4 5 | 5 5 | 6 7 tokens
    # DPO: pairs (0, 1), (2, 3), (4, 5) of at most 6, 5, 7 tokens stay whole, shortest pair first.
    # The reward model's pairs too, chosen first, although the rejected (1) is longer than its chosen (0): sorted
    # one by one (session 16's bug), pair k became (shorter, longer) and the RM learnt "shorter wins".
    for objective in ("dpo", "rm"):
        micros = _padded_rank(objective)._micro_batches(items)
        assert [[ids[id(it)] for it in m] for m in micros] == [[2, 3], [0, 1], [4, 5]], objective


def test_learner_forward_only_values_come_back_in_the_callers_order():
    # Per-token values computed in length order must be returned per sequence in the order given: here the value
    # of each completion token is the token itself.
    prompts, completions = [[1, 1], [1], [1, 1, 1]], [[7, 8, 9, 10], [5], [6, 6]]
    out = _padded_rank()._per_token(lambda b: b.targets.float(), prompts, completions)
    assert out == [[7.0, 8.0, 9.0, 10.0], [5.0], [6.0, 6.0]]


def test_critic_values_packed_equal_padded(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForTokenClassification

    from rlpost.learner.critic import CriticRank

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1, classifier_dropout=0.0)
    critic = CriticRank.__new__(CriticRank)  # only `_values`: the value head on a plain model, no DeepSpeed
    critic.engine = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, config=config,
                                                                    dtype=torch.float32)
    with torch.no_grad():
        padded = pack(PROMPTS, COMPLETIONS, 0)
        packed = pack_sequences(PROMPTS, COMPLETIONS)
        want = critic._values(padded) * padded.completion_mask
        close(critic._values(packed), want, atol=1e-5)
