"""The HF rollout engine on its own (no Ray): padding, stopping, sampling knobs and its logprobs."""

from __future__ import annotations

import pytest
import torch

from rlpost.rollout.engine import SamplingParams
from rlpost.rollout.hf_engine import HFEngine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: str) -> HFEngine:
    return HFEngine(tiny_model_dir, batch_size=4)


def prompts(engine: HFEngine) -> list[list[int]]:
    tok = engine.tokenizer
    texts = ["Hi", "What is 2 + 2? Think step by step, then answer.", "Name three colours."]
    rendered = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
                for t in texts]
    return [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]


def test_sampled_logprobs_match_teacher_forcing(engine: HFEngine) -> None:
    """Generation (left-padded, KV cache) and scoring (right-padded, one pass) agree on every sampled token."""
    ps = prompts(engine)
    samples = engine.generate(ps, SamplingParams(temperature=0.7, max_new_tokens=12, seed=1))
    assert [s.prompt_ids for s in samples] == ps
    scored = engine.score(ps, [s.completion_ids for s in samples], temperature=0.7)
    for s, lp in zip(samples, scored, strict=True):
        assert len(s.logprobs) == len(s.completion_ids) == len(lp)
        assert max(abs(a - b) for a, b in zip(s.logprobs, lp, strict=True)) < 1e-4


def test_batching_and_padding_do_not_change_greedy_output(engine: HFEngine) -> None:
    ps = prompts(engine)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    together = engine.generate(ps, greedy)
    alone = [engine.generate([p], greedy)[0] for p in ps]
    assert [s.completion_ids for s in together] == [s.completion_ids for s in alone]


def test_top_k_1_is_greedy_and_seeds_reproduce(engine: HFEngine) -> None:
    ps = prompts(engine)
    greedy = engine.generate(ps, SamplingParams(temperature=0.0, max_new_tokens=8))
    top1 = engine.generate(ps, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=8, seed=3))
    assert [s.completion_ids for s in top1] == [s.completion_ids for s in greedy]
    a = engine.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=8, seed=5))
    b = engine.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=8, seed=5))
    c = engine.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=8, seed=6))
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c]


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_stops_at_eos_and_keeps_it(engine: HFEngine, ignore_eos: bool) -> None:
    """Point the output layer's EOS row along the prompt's last hidden state: greedy decoding must then pick EOS
    first, stop, keep it as the completion's one token, and report "stop". With `ignore_eos` it samples on to
    max_new_tokens and reports "length"."""
    eos = min(engine.eos_ids)
    head = engine.model.get_output_embeddings().weight
    saved = head.data[eos].clone()
    p = prompts(engine)[0]
    try:
        with torch.no_grad():
            hidden = engine.model.model(input_ids=torch.tensor([p])).last_hidden_state[0, -1]
            head.data[eos] = hidden / hidden.norm() * 1e3
        out = engine.generate([p], SamplingParams(temperature=0.0, max_new_tokens=8, ignore_eos=ignore_eos))[0]
    finally:
        head.data[eos] = saved
    if ignore_eos:
        assert out.completion_ids[0] == eos and len(out.completion_ids) == 8 and out.finish_reason == "length"
        assert len(out.logprobs) == 8
    else:
        assert out.completion_ids == [eos] and out.finish_reason == "stop"
        assert len(out.logprobs) == 1
    assert out.logprobs[0] > -1e-3  # all the mass on EOS


def test_length_finish_reason(engine: HFEngine) -> None:
    samples = engine.generate(prompts(engine), SamplingParams(temperature=1.0, max_new_tokens=3, seed=0))
    for s in samples:
        assert len(s.completion_ids) <= 3
        assert s.finish_reason == ("stop" if s.completion_ids[-1] in engine.eos_ids else "length")
