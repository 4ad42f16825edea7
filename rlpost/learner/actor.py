"""One DeepSpeed learner rank, run as a Ray actor. N of them form a data-parallel group (ZeRO stage 0-3).

The reference model (for the KL term) lives inside each learner rank rather than in its own actor group: it
needs exactly the same sequences the learner already holds, so no data moves, and on the CPU/debug machine an
extra group would cost one more set of processes for nothing. Under ZeRO-3 it is sharded like the policy. With
`algo.kl_coef=0` it is not loaded at all.

Loss normalisation: the driver passes, per mini-batch, the global token and sequence counts. DeepSpeed divides
each micro-batch loss by the accumulation steps and averages gradients over ranks, so we hand the aggregation
`count / (accum_steps * world_size)` as normaliser: the resulting gradient is exactly that of the whole
mini-batch's token-mean, however it is split across micro-batches and ranks.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rlpost.algos import KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES, entropy_from_logits, masked_mean
from rlpost.config import samples_per_rank
from rlpost.digest import weights_digest
from rlpost.learner.checkpointing import CheckpointMixin
from rlpost.learner.ds_config import build_ds_config, build_ref_ds_config, lr_multiplier
from rlpost.learner.logprobs import PackedBatch, forward_logits, pack, repack, sequence_logprobs, token_logprobs
from rlpost.sync.buckets import Bucket, TensorSpec, plan_buckets
from rlpost.sync.transport import SyncGroupInfo, WeightTransport, create_transport
from rlpost.sync.weights import send_weights


@dataclass
class TrainItem:
    """One sampled completion as the learner needs it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    rollout_logprobs: list[float]


@dataclass
class MiniBatch:
    """This rank's share of one mini-batch, plus the mini-batch's global counts (for loss normalisation)."""

    items: list[TrainItem]
    global_tokens: int
    global_seqs: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerRank(CheckpointMixin):
    def __init__(self, cfg: dict, rank: int, world_size: int, model_path: str, total_optimizer_steps: int) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.model_path = model_path
        self.total_optimizer_steps = total_optimizer_steps
        self._transport: WeightTransport | None = None
        self._plan: list[Bucket] = []

    def address(self) -> tuple[str, int]:
        """Where this rank can host a rendezvous (the training group's, or the weight-sync group's)."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        lc, algo = self.cfg["learner"], self.cfg["algo"]
        device = self.cfg["cluster"]["device"]
        deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")
        self.device = torch.device("cpu") if device == "cpu" else torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(self.cfg["trainer"]["seed"])
        dtype = self.cfg["model"]["dtype"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.temperature = self.cfg["rollout"]["temperature"] or 1.0

        # Weights load in fp32 and DeepSpeed casts to the configured training dtype (it keeps fp32 master
        # weights in the optimizer either way).
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        if lc["gradient_checkpointing"]:
            model.gradient_checkpointing_enable()
        self.zero_stage = lc["zero_stage"]
        self.zero3 = self.zero_stage == 3
        optimizer = torch.optim.AdamW(model.parameters(), lr=lc["lr"], betas=tuple(lc["betas"]),
                                      weight_decay=lc["weight_decay"])
        self.micro = lc["micro_batch_size"]
        self.accum = samples_per_rank(self.cfg["trainer"]["prompts_per_step"], algo["group_size"],
                                      algo["num_minibatches"], self.world_size) // self.micro

        def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
                s, lc["warmup_steps"], self.total_optimizer_steps, lc["lr_schedule"], lc["min_lr_ratio"]))

        ds_cfg = build_ds_config(lc["zero_stage"], self.micro, self.accum, self.world_size, lc["grad_clip"], dtype)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                               config=ds_cfg)
        self.ref = None
        if algo["kl_coef"] > 0:
            ref = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype))
            ref.requires_grad_(False).eval()
            if self.zero3:
                ref_cfg = build_ref_ds_config(3, self.micro, self.world_size, dtype)
                self.ref, *_ = deepspeed.initialize(model=ref, config=ref_cfg)
            else:
                self.ref = ref.to(self.device)
        self._params = dict(self.engine.module.named_parameters())

    # ---- training ---------------------------------------------------------------------------------------
    def _micro_batches(self, items: list[TrainItem]) -> list[list[TrainItem]]:
        return [items[i:i + self.micro] for i in range(0, len(items), self.micro)]

    def _pack(self, items: list[TrainItem]) -> PackedBatch:
        return pack([it.prompt_ids for it in items], [it.completion_ids for it in items], self.pad_id).to(
            self.device)

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, items: list[TrainItem]) -> list[torch.Tensor]:
        """Per micro-batch [b, L-1] logprobs of `model`, in `_micro_batches` order (for ref / old policy)."""
        out = []
        for micro in self._micro_batches(items):
            batch = self._pack(micro)
            out.append(token_logprobs(forward_logits(model, batch), batch.targets, self.temperature))
        return out

    def train_step(self, minibatches: list[MiniBatch]) -> dict[str, float]:
        """`algo.epochs` passes over this rank's mini-batch shares, one optimizer step per mini-batch."""
        algo = self.cfg["algo"]
        # Old-policy logprobs are only needed when the policy moves between mini-batches; with a single update
        # per rollout the ratio is exactly 1 and the detached current logprobs serve (saves a forward pass).
        needs_old = algo["num_minibatches"] * algo["epochs"] > 1
        self.engine.eval()
        refs = [self._logprobs(self.ref, mb.items) for mb in minibatches] if self.ref is not None else None
        olds = [self._logprobs(self.engine, mb.items) for mb in minibatches] if needs_old else None
        self.engine.train()

        means, grad_norms, tokens, t0 = _WeightedMeans(), [], 0, time.perf_counter()
        for epoch in range(algo["epochs"]):
            for m, mb in enumerate(minibatches):
                for k, micro in enumerate(self._micro_batches(mb.items)):
                    batch = self._pack(micro)
                    loss = self._micro_loss(micro, batch, mb, None if olds is None else olds[m][k],
                                            None if refs is None else refs[m][k], means,
                                            first_pass=epoch == 0 and m == 0)
                    self.engine.backward(loss)
                    boundary = k == self.accum - 1  # this micro-batch completes the mini-batch: optimizer steps
                    if boundary and self.zero_stage == 0:
                        # Without ZeRO, DeepSpeed clips fp32 grads in place and keeps no norm: take it here,
                        # after the all-reduce (done in backward at the boundary), before clipping.
                        grads = [p.grad for p in self._params.values() if p.grad is not None]
                        grad_norms.append(float(torch.nn.utils.get_total_norm(grads)))
                    self.engine.step()
                    if boundary and self.zero_stage > 0:
                        grad_norms.append(float(self.engine.get_global_grad_norm()))
                    tokens += int(batch.attention_mask.sum())
        metrics = means.result()
        metrics["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        metrics["actor/lr"] = float(self.engine.get_lr()[0])
        metrics["learner/tokens"] = float(tokens)
        metrics["learner/seconds"] = time.perf_counter() - t0
        return metrics

    def _micro_loss(self, micro: list[TrainItem], batch: PackedBatch, mb: MiniBatch, old: torch.Tensor | None,
                    ref: torch.Tensor | None, means: _WeightedMeans, first_pass: bool) -> torch.Tensor:
        """Policy loss (+ KL to the reference) of one micro-batch, normalised for the whole mini-batch."""
        algo = self.cfg["algo"]
        aggregate = LOSS_AGGREGATIONS.get(algo["loss_agg"])
        mask = batch.completion_mask
        logits = forward_logits(self.engine, batch)
        logprobs = token_logprobs(logits, batch.targets, self.temperature)
        adv = torch.tensor([it.advantage for it in micro], device=self.device)
        per_token, clip_frac = POLICY_LOSSES.get(algo["policy_loss"])(
            logprobs, logprobs.detach() if old is None else old, adv, mask, algo["clip_low"], algo["clip_high"])
        norm = self.accum * self.world_size  # see the module docstring
        num_tokens, num_seqs = mb.global_tokens / norm, mb.global_seqs / norm
        loss = aggregate(per_token, mask, num_tokens, num_seqs)

        n = float(mask.sum())
        if ref is not None:
            kl = KL_ESTIMATORS.get(algo["kl_estimator"])(logprobs, ref)
            loss = loss + algo["kl_coef"] * aggregate(kl, mask, num_tokens, num_seqs)
            means.add("actor/kl", masked_mean(kl.detach(), mask), n)
        with torch.no_grad():
            means.add("actor/pg_loss", masked_mean(per_token, mask), n)
            means.add("actor/entropy", masked_mean(entropy_from_logits(logits), mask), n)
            means.add("actor/clip_frac", clip_frac, n)
            if first_pass:  # the policy still equals the one that sampled: engine and learner must agree
                rollout = repack([it.rollout_logprobs for it in micro], mask)
                means.add("rollout/logprob_diff", masked_mean((logprobs - rollout).abs(), mask), n)
        return loss

    # ---- scoring (diagnostics and tests) ----------------------------------------------------------------
    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """Logprobs of given completions under the current policy. Under ZeRO-3 every rank must call this with
        the same inputs (the forward gathers parameters collectively)."""
        self.engine.eval()
        return sequence_logprobs(self.engine, prompts, completions, self.temperature, self.pad_id, self.device,
                                 batch_size=self.micro)

    # ---- weight sync ------------------------------------------------------------------------------------
    def sync_plan(self, bucket_mb: float) -> list[Bucket]:
        specs = [TensorSpec(name, tuple(getattr(p, "ds_shape", p.shape)), p.dtype) for name, p in self._params.items()]
        self._plan = plan_buckets(specs, int(bucket_mb * 2**20))
        return self._plan

    def init_weight_sync(self, info: SyncGroupInfo) -> None:
        """Rank 0 joins the sync group as its sender; other ranks only take part in ZeRO-3 gathers."""
        if self.rank == 0:
            self._transport = create_transport(info, 0)

    @contextmanager
    def _gathered(self, names: list[str]):
        params = [self._params[n] for n in names]
        if self.zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield [p.data for p in params]
        else:
            yield [p.data for p in params]

    def send_weights(self) -> dict[str, float]:
        return send_weights(self._transport, self._plan, lambda b: self._gathered([s.name for s in b.specs]))

    def weights_digest(self) -> str:
        with self._gathered(list(self._params)) as tensors:
            return weights_digest(zip(self._params, tensors, strict=True))


class _WeightedMeans:
    """Token-weighted running means of scalar metrics across micro-batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, key: str, value: torch.Tensor | float, weight: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}
