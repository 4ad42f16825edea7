"""One DeepSpeed learner rank, run as a Ray actor. N of them form a data-parallel group (ZeRO stage 0-3).

The reference model (for the KL term and DPO) lives inside each learner rank rather than in its own actor group:
it needs exactly the same sequences the learner already holds, and on the CPU/debug machine an extra group would
cost one more set of processes for nothing. Under ZeRO-3 it is sharded like the policy. Without a KL term or DPO
it is not loaded at all.

A step has two calls: `experience` (the experience phase: reference and sampling-policy logprobs of the batch,
forward passes only, no_grad) and `train_step` (the updates, which read those numbers from the items). The
objective decides the loss of a micro-batch: the clipped policy loss on advantages (pg), or DPO on consecutive
(chosen, rejected) items (dpo; `algo.dpo_loss`). `rlpost.learner.critic.CriticRank` reuses this class for PPO's
value function, `rlpost.learner.reward_model.RewardModelRank` for reward-model training.

Loss normalisation: the driver passes, per mini-batch, the global token and sequence counts. DeepSpeed divides
each micro-batch loss by the accumulation steps and averages gradients over ranks, so we hand the aggregation
`count / (accum_steps * world_size)` as normaliser: the resulting gradient is exactly that of the whole
mini-batch's token-mean, however it is split across micro-batches and ranks.

Micro-batches hold `learner.micro_batch_size` sequences, right-padded, or, with `learner.max_tokens_per_micro`,
as many as fit that token budget packed into one row without padding (`rlpost.packing`). Both kinds of batch give
per-token values in the same padded [B, T] layout, so the losses below do not know which one they got.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout

import torch

from rlpost.algos import (
    DPO_LOSSES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    decoupled_ppo_loss,
    importance_ratio_stats,
    masked_mean,
    pair_accuracy,
    sequence_logprob,
)
from rlpost.config import RunError, needs_reference, samples_per_rank, sequences_per_example, train_sequences_per_step
from rlpost.digest import weights_digest
from rlpost.experience import MiniBatch, TrainItem
from rlpost.learner.checkpointing import CheckpointMixin
from rlpost.learner.ds_config import build_ds_config, build_ref_ds_config, lr_multiplier
from rlpost.learner.memory import check_rank_fits, end_of_step_memory
from rlpost.logprobs import (
    PackedBatch,
    pack,
    per_completion_token,
    repack,
    token_logprobs,
    token_logprobs_and_entropy,
    unpack,
)
from rlpost.metrics import WeightedMeans
from rlpost.packing import PackedSequences, length_order, pack_sequences, token_budget_chunks
from rlpost.sync.buckets import Bucket, TensorSpec, plan_buckets
from rlpost.sync.store import free_port, tcp_store
from rlpost.sync.transport import SyncGroupInfo, WeightTransport, create_transport
from rlpost.sync.weights import send_weights

Batch = PackedBatch | PackedSequences  # a micro-batch padded (learner.max_tokens_per_micro=0) or packed


@contextmanager
def fp32_buffers_kept(model: torch.nn.Module):
    """Undo DeepSpeed's cast of float32 *buffers* to the training dtype (`module.bfloat16()` casts buffers too).
    RoPE's `inv_freq` is such a buffer: in bf16 its rounding error times the position shifts every rotary angle,
    which made the learner's logprobs disagree with vLLM's (whose rotary angles are computed in fp32) by ~4e-2 on
    average for SmolLM2 at the same weights. Parameters are cast as configured; buffers keep their precision."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers() if buf.dtype == torch.float32}
    yield
    for name, value in saved.items():
        owner, _, key = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._buffers[key] = value.to(module._buffers[key].device)


@contextmanager
def lines_dropped(marker: str) -> Iterator[None]:
    """Print what the block prints to stdout, except the lines containing `marker`."""
    buffer = io.StringIO()
    try:
        with redirect_stdout(buffer):
            yield
    finally:
        sys.stdout.write("".join(line for line in buffer.getvalue().splitlines(keepends=True) if marker not in line))



def use_safe_attention_kernels() -> None:
    """Keep this process's attention off cuDNN's SDPA kernel, torch 2.11's default on H100/H200. Its backward
    returns NaN in dQ when an explicit attention mask is passed, the padded width is 64 mod 128 and a head's
    logsumexp is below ln(FLT_MAX) ~ -88.7 (pytorch/pytorch#196678), and Qwen2.5 has such heads: every GSM8K run
    on it skipped 2-5% of its updates for a non-finite gradient norm while the padded forwards passed a mask
    (bench/RESULTS.md, run `grpo-cos`). They pass none now (`rlpost.logprobs.forward_logits`), but packed
    micro-batches and reward-model training still attend under a mask. The flash and memory-efficient kernels are
    clean on the same inputs."""
    torch.backends.cuda.enable_cudnn_sdp(False)


class LearnerRank(CheckpointMixin):
    prefix = "actor"  # metric names: actor/grad_norm, actor/lr, ...
    group = "learner"  # learner/tokens, learner/seconds

    def __init__(self, cfg: dict, rank: int, world_size: int, model_path: str, total_optimizer_steps: int) -> None:
        import deepspeed  # noqa: F401 - imported now, while colocated engines start, rather than in `setup`

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.model_path = model_path
        self.total_optimizer_steps = total_optimizer_steps
        self._transport: WeightTransport | None = None
        self._plan: list[Bucket] = []
        self._skips_in_a_row = 0  # optimizer updates skipped for a non-finite loss or gradient norm, in a row

    def address(self) -> tuple[str, int]:
        """Where this rank can host a rendezvous (the training group's, or the weight-sync group's)."""
        import ray

        host = ray.util.get_node_ip_address()
        return host, free_port(host)

    def _load_model(self) -> torch.nn.Module:
        """The trained model, in fp32 (DeepSpeed casts to the configured training dtype and keeps fp32 master
        weights in the optimizer either way)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)

    def _lr(self) -> float:
        return self.cfg["learner"]["lr"]

    def _loads_reference(self) -> bool:
        return needs_reference(self.cfg["algo"])

    def setup(self, master_addr: str, master_port: int) -> None:
        import deepspeed
        from deepspeed.constants import default_pg_timeout

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        lc, algo = self.cfg["learner"], self.cfg["algo"]
        device = self.cfg["cluster"]["device"]
        if device == "cuda":
            torch.cuda.set_device(0)  # Ray shows each rank exactly its own GPU(s) through CUDA_VISIBLE_DEVICES
            use_safe_attention_kernels()
        # The training group's rendezvous store, made here rather than by torch's env:// (whose server listens on
        # every interface) so that a local cluster's listens on loopback only; DeepSpeed adopts the group.
        backend = "gloo" if device == "cpu" else "nccl"
        store = tcp_store(master_addr, master_port, self.world_size, self.rank == 0, default_pg_timeout)
        torch.distributed.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size,
                                             timeout=default_pg_timeout)
        with lines_dropped("built successfully"):  # DeepSpeed announces its prebuilt CPU comm op on every start
            deepspeed.init_distributed(dist_backend=backend)
        self.device = torch.device("cpu") if device == "cpu" else torch.device("cuda", torch.cuda.current_device())
        self.colocated = bool(self.cfg["cluster"].get("colocate", False))
        try:
            self._build_models(deepspeed, lc, algo)
        except torch.OutOfMemoryError as e:
            raise RunError(
                f"learner: the model does not fit on the GPU at learner.zero_stage={lc['zero_stage']} "
                f"({str(e).splitlines()[0][:120]}); raise learner.zero_stage to 3, add learner.num_ranks, set "
                "learner.gradient_checkpointing=true or lower rollout.gpu_memory_utilization") from None
        check_rank_fits(self)  # engines that stay awake beside it leave the learner a fixed share of the GPU

    def _build_models(self, deepspeed, lc: dict, algo: dict) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(self.cfg["trainer"]["seed"])
        dtype = self.cfg["model"]["dtype"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.temperature = self.cfg["rollout"]["temperature"] or 1.0

        model = self._load_model().to(self.device)
        if lc["gradient_checkpointing"]:
            model.gradient_checkpointing_enable()
        self.zero_stage = lc["zero_stage"]
        self.zero3 = self.zero_stage == 3
        # torch's fused AdamW on GPU: one kernel for all parameters, no DeepSpeed op to compile.
        optimizer = torch.optim.AdamW(model.parameters(), lr=self._lr(), betas=tuple(lc["betas"]),
                                      weight_decay=lc["weight_decay"], fused=self.device.type == "cuda")
        self.micro = lc["micro_batch_size"]
        self.packed = lc["max_tokens_per_micro"] > 0
        self.accum = samples_per_rank(train_sequences_per_step(self.cfg), algo["num_minibatches"],
                                      self.world_size) // self.micro

        def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
                s, lc["warmup_steps"], self.total_optimizer_steps, lc["lr_schedule"], lc["min_lr_ratio"]))

        ds_cfg = build_ds_config(lc["zero_stage"], self.micro, self.accum, self.world_size, lc["grad_clip"], dtype)
        with fp32_buffers_kept(model):
            self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                                   config=ds_cfg)
        self.ref = None
        if self._loads_reference():
            ref = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype))
            ref.requires_grad_(False).eval()
            if self.zero3:
                ref_cfg = build_ref_ds_config(3, self.micro, self.world_size, dtype)
                with fp32_buffers_kept(ref):
                    self.ref, *_ = deepspeed.initialize(model=ref, config=ref_cfg)
            else:
                self.ref = ref.to(self.device)
        self._params = dict(self.engine.module.named_parameters())

    # ---- experience ---------------------------------------------------------------------------------------
    def experience(self, prompts: list[list[int]], completions: list[list[int]], old: bool = False
                   ) -> dict[str, list[list[float]]]:
        """This rank's share of the experience phase: the reference's token logprobs (when it is loaded) and,
        with `old`, the current policy's (the denominator of the importance ratio). Under ZeRO-3 every rank must
        call this with as many sequences as the others (the forwards gather parameters collectively)."""
        out = {}
        if self.ref is not None:
            out["ref_logprobs"] = self._logprobs(self.ref, prompts, completions)
        if old:
            self.engine.eval()
            out["old_logprobs"] = self._logprobs(self.engine, prompts, completions)
        return out

    def _logprobs(self, model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]]
                  ) -> list[list[float]]:
        return self._per_token(lambda b: b.rows(token_logprobs(b.forward_logits(model), b.targets, self.temperature)),
                               prompts, completions)

    def _per_token(self, fn: Callable[[Batch], torch.Tensor], prompts: list[list[int]],
                   completions: list[list[int]]) -> list[list[float]]:
        """`fn` (a batch -> per-token values in the [B, T] loss layout) over this rank's sequences in forward-only
        micro-batches, returned per completion token: `micro_batch_size` sequences padded, or packed within the
        token budget."""
        lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
        if not self.packed:
            order = length_order(lengths)
            values = per_completion_token(fn, [prompts[i] for i in order], [completions[i] for i in order],
                                          self.pad_id, self.device, batch_size=self.micro)
            out = [[] for _ in order]
            for i, v in zip(order, values, strict=True):
                out[i] = v
            return out
        out: list[list[float]] = []
        for c in self._token_chunks(lengths):
            batch = pack_sequences(prompts[c.start:c.stop], completions[c.start:c.stop]).to(self.device)
            with torch.no_grad():
                out.extend(unpack(fn(batch), batch.completion_mask))
        return out

    def _token_chunks(self, lengths: list[int]) -> list[range]:
        """`learner.max_tokens_per_micro` chunks of sequences, as many on every rank: under ZeRO-2/3 each backward
        (or forward) is collective, so a rank with fewer chunks than another halves its largest."""
        budget = self.cfg["learner"]["max_tokens_per_micro"]
        count = torch.tensor(len(token_budget_chunks(lengths, budget)), device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        return token_budget_chunks(lengths, budget, min_chunks=int(count))

    # ---- training ---------------------------------------------------------------------------------------
    def _micro_batches(self, items: list[TrainItem]) -> list[list[TrainItem]]:
        """`micro_batch_size` items each, sorted by length (`rlpost.packing.length_order`), or token-budget chunks
        in order; a (chosen, rejected) pair stays together and in order (pair losses read items 2k, 2k+1)."""
        unit = sequences_per_example(self.cfg["algo"]["objective"])
        if not self.packed:
            order = length_order([len(it.prompt_ids) + len(it.completion_ids) for it in items], unit)
            items = [items[i] for i in order]
            return [items[i:i + self.micro] for i in range(0, len(items), self.micro)]
        lengths = [sum(len(it.prompt_ids) + len(it.completion_ids) for it in items[i:i + unit])
                   for i in range(0, len(items), unit)]
        return [items[c.start * unit:c.stop * unit] for c in self._token_chunks(lengths)]

    def _pack(self, items: list[TrainItem]) -> Batch:
        prompts, completions = [it.prompt_ids for it in items], [it.completion_ids for it in items]
        batch = pack_sequences(prompts, completions) if self.packed else pack(prompts, completions, self.pad_id)
        return batch.to(self.device)

    def train_step(self, minibatches: list[MiniBatch], kl_coef: float = 0.0) -> dict[str, float]:
        """`algo.epochs` passes over this rank's mini-batch shares, one optimizer step per mini-batch. `kl_coef`
        weighs the KL loss term this step (the driver may adapt it)."""
        algo = self.cfg["algo"]
        self.kl_coef = kl_coef
        self.engine.train()
        means, grad_norms, tokens, t0 = WeightedMeans(), [], 0, time.perf_counter()
        skipped = 0
        for epoch in range(algo["epochs"]):
            for m, mb in enumerate(minibatches):
                micros = self._micro_batches(mb.items)
                for k, micro in enumerate(micros):
                    batch = self._pack(micro)
                    boundary = k == len(micros) - 1  # this micro-batch completes the mini-batch: optimizer steps
                    # Micro-batches vary in number (token budgets; tied groups left out), so DeepSpeed's count of
                    # `accum` cannot find the boundary. Its loss scaling by 1 / accum is a constant the normalisers
                    # already undo.
                    self.engine.set_gradient_accumulation_boundary(boundary)
                    loss = self._micro_loss(micro, batch, mb, means, first_pass=epoch == 0 and m == 0)
                    self.engine.backward(loss)
                    if boundary and self.zero_stage == 0:
                        # Without ZeRO, DeepSpeed clips fp32 grads in place and keeps no norm: take it here,
                        # after the all-reduce (done in backward at the boundary), before clipping.
                        grads = [p.grad for p in self._params.values() if p.grad is not None]
                        grad_norms.append(float(torch.nn.utils.get_total_norm(grads)))
                        if not math.isfinite(grad_norms[-1]):
                            # A NaN/inf loss or gradient: skip the update. DeepSpeed's step still runs, so its
                            # counters and the LR schedule stay aligned, on zero gradients at learning rate 0,
                            # which moves no weight (the schedule sets the next step's rate again).
                            for p in self._params.values():
                                if p.grad is not None:
                                    p.grad.zero_()
                            for group in self.engine.optimizer.param_groups:
                                group["lr"] = 0.0
                    self.engine.step()
                    if boundary:
                        if self.zero_stage > 0:
                            norm = self.engine.get_global_grad_norm()
                            grad_norms.append(math.nan if norm is None else float(norm))
                        # ZeRO's optimizers skip a non-finite step themselves (was_step_applied); ZeRO-0's, above
                        applied = self.engine.was_step_applied() and math.isfinite(grad_norms[-1])
                        skipped += not applied
                        self._count_skip(applied)
                    tokens += batch.num_tokens
        finite = [g for g in grad_norms if math.isfinite(g)]
        metrics = means.result()
        metrics[f"{self.prefix}/grad_norm"] = sum(finite) / len(finite) if finite else float("nan")
        metrics[f"{self.prefix}/skipped_updates"] = float(skipped)
        metrics[f"{self.prefix}/lr"] = float(self.engine.get_lr()[0])
        metrics[f"{self.group}/tokens"] = float(tokens)
        metrics[f"{self.group}/seconds"] = time.perf_counter() - t0
        return metrics | end_of_step_memory(self)

    def _count_skip(self, applied: bool) -> None:
        """Stop the run after `learner.max_skipped_updates` skipped updates in a row: it has diverged, and every
        further step would be skipped too. The same on every rank (the gradient norm is the group's)."""
        self._skips_in_a_row = 0 if applied else self._skips_in_a_row + 1
        limit = self.cfg["learner"]["max_skipped_updates"]
        if limit and self._skips_in_a_row >= limit:
            raise RunError(f"{self.prefix}: {self._skips_in_a_row} updates in a row had a non-finite loss or gradient "
                           f"norm and were skipped (learner.max_skipped_updates={limit}); the run diverged: lower "
                           "learner.lr or check the rewards, and resume from the last checkpoint")

    def _normalisers(self, mb: MiniBatch) -> tuple[float, float]:
        """The mini-batch's global token and sequence counts, scaled for DeepSpeed (see the module docstring);
        at least 1, so a mini-batch that is all masked gives a zero loss, not 0 / 0."""
        norm = self.accum * self.world_size
        return max(mb.global_tokens, 1) / norm, max(mb.global_seqs, 1) / norm

    def _pair_loss(self, per_pair: torch.Tensor, margin: torch.Tensor, mb: MiniBatch, means: WeightedMeans,
                   prefix: str) -> torch.Tensor:
        """A preference loss (DPO, the reward model's) summed over this micro-batch's pairs and normalised by the
        mini-batch's global pair count; logs `<prefix>/loss`, `/margin` and `/accuracy` (`pair_accuracy`) per pair."""
        _, num_seqs = self._normalisers(mb)
        with torch.no_grad():
            logged = {"loss": per_pair.mean(), "margin": margin.mean(), "accuracy": pair_accuracy(margin)}
            for name, value in logged.items():
                means.add(f"{prefix}/{name}", value, float(len(per_pair)))
        return per_pair.sum() / (num_seqs / 2)

    def _micro_loss(self, micro: list[TrainItem], batch: Batch, mb: MiniBatch, means: WeightedMeans,
                    first_pass: bool) -> torch.Tensor:
        objective = self._dpo_loss if self.cfg["algo"]["objective"] == "dpo" else self._pg_loss
        return objective(micro, batch, mb, means, first_pass)

    def _pg_loss(self, micro: list[TrainItem], batch: Batch, mb: MiniBatch, means: WeightedMeans,
                 first_pass: bool) -> torch.Tensor:
        """Policy loss (+ KL to the reference) of one micro-batch, normalised for the whole mini-batch."""
        algo = self.cfg["algo"]
        aggregate = LOSS_AGGREGATIONS.get(algo["loss_agg"])
        in_loss = torch.tensor([float(it.in_loss) for it in micro], device=self.device).unsqueeze(-1)
        mask = batch.completion_mask * in_loss
        logprobs, entropy = self._logprobs_and_entropy(batch)
        completion = batch.completion_mask  # where the per-token lists go; `mask` says which of them count
        adv = repack([it.advantages for it in micro], completion)
        old = (logprobs.detach() if micro[0].old_logprobs is None
               else repack([it.old_logprobs for it in micro], completion))
        if algo["off_policy_correction"] == "none":
            per_token, clip_frac = POLICY_LOSSES.get(algo["policy_loss"])(
                logprobs, old, adv, mask, algo["clip_low"], algo["clip_high"], algo["clip_c"])
        else:
            behaviour = repack([it.rollout_logprobs for it in micro], completion)
            per_token, clip_frac = _decoupled_loss(logprobs, old, behaviour, adv, mask, algo, means)
        num_tokens, num_seqs = self._normalisers(mb)
        loss = aggregate(per_token, mask, num_tokens, num_seqs)

        n = float(mask.sum())
        if algo["kl_mode"] == "loss" and self.ref is not None and self.kl_coef > 0:
            ref = repack([it.ref_logprobs for it in micro], completion)
            kl = KL_ESTIMATORS.get(algo["kl_estimator"])(logprobs, ref)
            loss = loss + self.kl_coef * aggregate(kl, mask, num_tokens, num_seqs)
            means.add("actor/kl", masked_mean(kl.detach(), mask), n)
        with torch.no_grad():
            means.add("actor/pg_loss", masked_mean(per_token, mask), n)
            means.add("actor/entropy", masked_mean(entropy, mask), n)
            means.add("actor/clip_frac", clip_frac, n)
            self._check_rollout_logprobs(micro, batch, logprobs, means, first_pass)
        return loss

    def _dpo_loss(self, micro: list[TrainItem], batch: Batch, mb: MiniBatch, means: WeightedMeans,
                  first_pass: bool) -> torch.Tensor:
        """DPO loss of the micro-batch's pairs (items 2k and 2k+1 are pair k's chosen and rejected), normalised
        by the mini-batch's number of pairs."""
        algo = self.cfg["algo"]
        mask = batch.completion_mask
        logprobs, entropy = self._logprobs_and_entropy(batch)
        ref = repack([it.ref_logprobs for it in micro], mask)
        seq = sequence_logprob(logprobs, mask, algo["dpo_length_norm"])
        ref_seq = sequence_logprob(ref, mask, algo["dpo_length_norm"])
        per_pair, margin = DPO_LOSSES.get(algo["dpo_loss"])(seq[0::2], seq[1::2], ref_seq[0::2], ref_seq[1::2],
                                                           algo["dpo_beta"])
        loss = self._pair_loss(per_pair, margin, mb, means, "dpo")
        with torch.no_grad():
            # each side's log pi/pi_ref: both falling while the margin grows = the chosen losing likelihood too
            for side, log_ratio in (("chosen", seq[0::2] - ref_seq[0::2]), ("rejected", seq[1::2] - ref_seq[1::2])):
                means.add(f"dpo/{side}_logratio", log_ratio.mean(), float(len(per_pair)))
            means.add("actor/entropy", masked_mean(entropy, mask), float(mask.sum()))
            self._check_rollout_logprobs(micro, batch, logprobs, means, first_pass)
        return loss

    def _logprobs_and_entropy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's token logprobs (differentiable) and sampling entropy (a metric) in the [B, T] loss layout,
        from one pass over the vocabulary (`token_logprobs_and_entropy`)."""
        logprobs, entropy = token_logprobs_and_entropy(batch.forward_logits(self.engine), batch.targets,
                                                       self.temperature)
        return batch.rows(logprobs), batch.rows(entropy)

    def _check_rollout_logprobs(self, micro: list[TrainItem], batch: Batch, logprobs: torch.Tensor,
                                means: WeightedMeans, first_pass: bool) -> None:
        """On the first update the policy still equals the one that sampled: engine and learner must agree.
        Offline pairs were sampled by no engine here (their items carry no rollout logprobs)."""
        if first_pass and micro[0].rollout_logprobs:
            mask = batch.completion_mask
            rollout = repack([it.rollout_logprobs for it in micro], mask)
            means.add("rollout/logprob_diff", masked_mean((logprobs - rollout).abs(), mask), float(mask.sum()))

    # ---- scoring (diagnostics and tests) ----------------------------------------------------------------
    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """Logprobs of given completions under the current policy. Under ZeRO-3 every rank must call this with
        the same inputs (the forward gathers parameters collectively)."""
        self.engine.eval()
        return self._logprobs(self.engine, prompts, completions)

    # ---- weight sync ------------------------------------------------------------------------------------
    def sync_plan(self, bucket_mb: float) -> list[Bucket]:
        specs = [TensorSpec(name, tuple(getattr(p, "ds_shape", p.shape)), p.dtype) for name, p in self._params.items()]
        self._plan = plan_buckets(specs, int(bucket_mb * 2**20))
        return self._plan

    def gpu_uuid(self) -> str:
        from rlpost.sync.ipc import gpu_uuid

        return gpu_uuid()

    def init_weight_sync(self, info: SyncGroupInfo) -> None:
        """Broadcast transports: rank 0 is the sender; other ranks only take part in ZeRO-3 gathers. IPC: every
        rank that shares its GPU with engine workers sends to them (each rank holds full tensors after the
        gather, so no rank has to ship weights to another GPU). A second call replaces the group."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if info.transport == "ipc":
            if self.gpu_uuid() in info.ipc_senders:
                self._transport = create_transport(info, 0)
        elif self.rank == 0:
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


def _decoupled_loss(logprobs: torch.Tensor, proximal: torch.Tensor, behaviour: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, algo: dict, means: WeightedMeans) -> tuple[torch.Tensor, torch.Tensor]:
    """AReaL's decoupled PPO loss (`algo.off_policy_correction`): the learner's old logprobs are the proximal
    policy, the rollout engine's sampled-token logprobs the behaviour policy. Logs the importance ratio."""
    cap = algo["tis_cap"]
    per_token, clip_frac = decoupled_ppo_loss(logprobs, proximal, behaviour, adv, mask, algo["clip_low"],
                                              algo["clip_high"], algo["clip_c"], cap, algo["off_policy_correction"],
                                              algo["policy_loss"])
    stats, n = importance_ratio_stats(proximal, behaviour, mask, cap), float(mask.sum())
    means.add("off_policy/ratio_mean", stats["ratio_mean"], n)
    means.add("off_policy/capped_frac", stats["capped_frac"], n)
    means.add_max("off_policy/ratio_max", stats["ratio_max"])  # 0 for an all-masked micro-batch: ratios are > 0
    return per_token, clip_frac
