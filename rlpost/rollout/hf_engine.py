"""The CPU/debug rollout engine: Hugging Face transformers `generate` inside a Ray actor.

Prompts are batched with left padding (so every row's last prompt token sits at the same position and decoding
appends in lock-step). `generate` is asked for the raw logits of every step (`output_logits=True`), from which we
take log_softmax(logits / T) at the sampled token; the memory this costs is batch x new tokens x vocab floats,
which `rollout.batch_size` bounds. This engine favours being obviously correct over speed: the GPU engine is vLLM.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpost.digest import weights_digest
from rlpost.logprobs import sequence_logprobs
from rlpost.rollout.engine import RolloutEngine, Sample, SamplingParams
from rlpost.sync.buckets import Bucket
from rlpost.sync.direct import DirectCopy
from rlpost.sync.transport import SyncGroupInfo, WeightTransport, create_transport
from rlpost.sync.weights import NamedTensors, receive_weights


class HFEngine(RolloutEngine):
    def __init__(self, model_path: str, dtype: str = "float32", batch_size: int = 16, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._params = dict(self.model.named_parameters())
        self._transport: WeightTransport | None = None
        self._plan: list[Bucket] = []

    # ---- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        samples: list[Sample] = []
        for i in range(0, len(prompts), self.batch_size):
            samples.extend(self._generate_batch(prompts[i:i + self.batch_size], params))
        return samples

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Sample]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding
            input_ids[row, width - len(p):] = torch.tensor(p)
            attention[row, width - len(p):] = 1
        sampling = params.temperature > 0
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
            do_sample=sampling, max_new_tokens=params.max_new_tokens,
            # Explicit values for every knob, so the model's generation_config defaults (often top_k=50) never
            # sneak in: what the config says is what is sampled.
            temperature=params.temperature if sampling else None, top_p=params.top_p if sampling else None,
            top_k=params.top_k if sampling else None,
            eos_token_id=[] if params.ignore_eos else sorted(self.eos_ids), pad_token_id=self.pad_id,
            output_logits=True, return_dict_in_generate=True)
        new_tokens = out.sequences[:, width:].cpu()
        logits = torch.stack(out.logits, dim=1).float()  # [batch, steps, vocab], raw (before any processor)
        logprobs = torch.log_softmax(logits / params.logprob_temperature, dim=-1)
        token_logprobs = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1).cpu()
        samples = []
        for row, prompt in enumerate(prompts):
            ids = new_tokens[row].tolist()
            stop = None if params.ignore_eos else next((t for t, tok in enumerate(ids) if tok in self.eos_ids), None)
            n = len(ids) if stop is None else stop + 1  # keep the EOS: it was sampled and is trained on
            samples.append(Sample(prompt_ids=list(prompt), completion_ids=ids[:n],
                                  logprobs=token_logprobs[row, :n].tolist(),
                                  finish_reason="length" if stop is None else "stop"))
        return samples

    @torch.no_grad()
    def score(self, prompts: list[list[int]], completions: list[list[int]], temperature: float = 1.0
              ) -> list[list[float]]:
        return sequence_logprobs(self.model, prompts, completions, temperature, self.pad_id, self.device)

    # ---- weight sync ------------------------------------------------------------------------------------
    def init_weight_sync(self, info: SyncGroupInfo, rank: int, plan: list[Bucket]) -> None:
        unknown = [s.name for b in plan for s in b.specs if s.name not in self._params]
        if unknown:
            raise ValueError(f"learner sends parameters this engine's model lacks: {unknown[:5]}")
        if self._transport is not None:  # a new group (a restarted peer engine): leave the old one first
            self._transport.close()
        self._plan = plan
        self._direct = DirectCopy(plan, self._params)
        self._transport = create_transport(info, rank)

    def receive_weights(self) -> int:
        assert self._transport is not None, "init_weight_sync first"
        return receive_weights(self._transport, self._plan, self.load_weights, self._direct)

    @torch.no_grad()
    def load_weights(self, named: NamedTensors) -> None:
        for name, tensor in named:
            self._params[name].copy_(tensor)

    def weights_digest(self) -> str:
        return weights_digest(self.model.named_parameters())

    def ready(self) -> bool:
        return True
