"""Teacher-forced token logprobs: the one computation that learner and engines must agree on.

Sequences are prompt + completion, right-padded. Position t's logits predict token t+1. Only the positions from
`start` (the shortest prompt's last token) on can predict a completion token, so that is where the per-token
tensors here begin: each has length L-1-start and is aligned with `targets = input_ids[:, start+1:]`;
`completion_mask` marks the targets that are completion tokens (the only ones that are scored and trained on).
Skipping the prompt positions spares the LM head and the vocabulary-wide softmax there, which dominate the cost
of RL updates whenever prompts are long relative to completions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L]
    completion_mask: torch.Tensor  # [B, L-1-start] float, 1 on completion targets
    start: int = 0  # first position whose logits are computed

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, self.start + 1:]

    @property
    def num_tokens(self) -> int:
        """Real (not padding) tokens."""
        return int(self.attention_mask.sum())

    def forward_logits(self, model: torch.nn.Module) -> torch.Tensor:
        """[B, T, V] logits aligned with the completion mask (see `forward_logits`)."""
        return forward_logits(model, self)

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token values in the [B, T] loss layout: already there (`rlpost.packing.PackedSequences` scatters)."""
        return values

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.completion_mask.to(device), self.start)


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> PackedBatch:
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    start = min(len(p) for p in prompts) - 1
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width - 1 - start), dtype=torch.float32)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        n = len(p) + len(c)
        input_ids[row, :n] = torch.tensor(p + c)
        attention[row, :n] = 1
        mask[row, len(p) - 1 - start:n - 1 - start] = 1.0
    return PackedBatch(input_ids, attention, mask, start)


# fp32 temporaries per chunk: ~256 MB whatever the vocabulary, instead of batch x length x vocab x 4 bytes.
CHUNK_BYTES = 2**28
# The torch.profiler range around the vocabulary-wide work, forward and backward (bench/learner.py's profile
# attributes what runs inside it): eager it is plain exp/sub/mul/sum kernels, compiled it is fused ones.
PROFILE_SCOPE = "rlpost::vocabulary"


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _scaled_chunk(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """A fresh fp32 copy of a chunk of logits divided by T (a copy even for fp32 logits: callers work in place)."""
    x = logits.to(torch.float32, copy=True)
    return x.div_(temperature) if temperature != 1.0 else x


def _forward_chunk(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                   with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(log_softmax(x / T)[target], logsumexp(x / T), entropy of softmax(x / T) or None) per row of a chunk."""
    x = _scaled_chunk(logits, temperature)
    entropy = None
    if with_entropy:  # exp once for both: lse = m + log sum e, H = lse - sum(e x) / sum e, e = exp(x - m)
        top = x.amax(dim=-1, keepdim=True)
        e = (x - top).exp_()
        total = e.sum(dim=-1)
        lse = top.squeeze(-1) + total.log()
        entropy = lse - torch.linalg.vecdot(e, x) / total
    else:
        lse = torch.logsumexp(x, dim=-1)
    return x.gather(-1, targets[:, None]).squeeze(-1) - lse, lse, entropy


def _backward_chunk(logits: torch.Tensor, targets: torch.Tensor, norms: torch.Tensor, grad_out: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """d/dx_j of the chunk's logprobs weighted by `grad_out`: (1[j = target] - p_j) g / T, in the logits' dtype.
    p = exp(x / T - logsumexp) in place in one fp32 copy of the chunk; the target's +g / T is added after the
    conversion (n elements), so that a compiled kernel writes the whole chunk in one pass."""
    g = grad_out[:, None].float() / temperature
    p = _scaled_chunk(logits, temperature)
    grad = p.sub_(norms[:, None]).exp_().mul_(-g).to(logits.dtype)
    return grad.scatter_add_(-1, targets[:, None], g.to(logits.dtype))


class ChunkKernels:
    """The per-chunk functions, compiled once per process for tensors on `devices` (CUDA: torch.compile fuses
    each into one or two passes over the chunk in its own dtype, where run eagerly they make ~10 passes over fp32
    copies, 5% of the H200's bandwidth bound: bench/RESULTS.md), eager elsewhere (the CPU runs the eager in-place
    code: inductor's C++ compile there would cost the tests and the debug mode more than it saves). If compiling
    fails (no Triton, say), one line says so and the eager functions stand in for the rest of the process."""

    def __init__(self, devices: tuple[str, ...] = ("cuda",), backend: str | Callable = "inductor") -> None:
        self.devices, self.backend = devices, backend
        self._compiled: tuple[Callable, Callable] | None = None
        self.failed = False

    def _functions(self, logits: torch.Tensor) -> tuple[Callable, Callable]:
        if logits.device.type not in self.devices or self.failed:
            return _forward_chunk, _backward_chunk
        if self._compiled is None:
            self._compiled = (torch.compile(_forward_chunk, backend=self.backend),
                              torch.compile(_backward_chunk, backend=self.backend))
        return self._compiled

    def run(self, which: int, logits: torch.Tensor, *args) -> object:
        """`_forward_chunk` (which=0) or `_backward_chunk` (1) of `logits` and `args`."""
        try:
            functions = self._functions(logits)
            if functions[0] is not _forward_chunk:  # compiled: one graph for any chunk height, not one per height
                for t in (logits, *args):
                    if isinstance(t, torch.Tensor):
                        torch._dynamo.maybe_mark_dynamic(t, 0)
            return functions[which](logits, *args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # a compile failure; any eager failure raises again below
            if logits.device.type not in self.devices or self.failed:
                raise
            self.failed = True
            # torch's message names the backend on its first line and the error underneath on the next
            detail = " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:2])[:200]
            print(f"[rlpost] torch.compile of the vocabulary-wide logprob kernels failed ({type(e).__name__}: "
                  f"{detail}); running them eagerly", flush=True)
            return (_forward_chunk, _backward_chunk)[which](logits, *args)


KERNELS = ChunkKernels()  # the process's: each compiled function compiles once per process


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(x / T)[target] row by row in chunks, for x of shape [N, V] (logits in their own dtype), and,
    if asked, the entropy of softmax(x / T) per row from the same fp32 chunk.

    Forward keeps only the [N] results and logsumexps; backward recomputes softmax per chunk from them:
    d/dx_j = (1[j = target] - p_j) / T.
    Autograd through a plain `log_softmax(x.float() / T)` would save fp32 copies of the whole [N, V] logits, which
    for a 150k vocabulary and a few thousand tokens is gigabytes more than the logits themselves. The entropy
    H = logsumexp(x) - sum_j p_j x_j (a metric, no gradient) reuses the exponentials of the logsumexp and adds one
    dot product over the chunk already converted, where a separate pass over the logits (convert, log_softmax,
    p log p) cost about half as much as the logprobs' forward and backward together (bench/vocab.py, CPU).
    `kernels`: where the per-chunk functions come from (`KERNELS`: compiled on CUDA); None: eager.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_entropy: bool, kernels: ChunkKernels | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        entropy = torch.empty(logits.shape[0] if with_entropy else 0, dtype=torch.float32, device=logits.device)
        norms = torch.empty_like(out)  # logsumexp(x / T) per row: the backward's softmax needs no reduction
        step = _chunk_rows(logits.shape[1])
        with torch.profiler.record_function(PROFILE_SCOPE):
            for s in range(0, logits.shape[0], step):
                args = (logits[s:s + step], targets[s:s + step], temperature, with_entropy)
                picked, lse, h = kernels.run(0, *args) if kernels else _forward_chunk(*args)
                out[s:s + step], norms[s:s + step] = picked, lse
                if with_entropy:
                    entropy[s:s + step] = h
        ctx.save_for_backward(logits, targets, norms)
        ctx.temperature, ctx.kernels = temperature, kernels
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor,
                 _grad_entropy: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        logits, targets, norms = ctx.saved_tensors
        grad = torch.empty_like(logits)
        step = _chunk_rows(logits.shape[1])
        with torch.profiler.record_function(PROFILE_SCOPE):
            for s in range(0, logits.shape[0], step):
                args = (logits[s:s + step], targets[s:s + step], norms[s:s + step], grad_out[s:s + step],
                        ctx.temperature)
                grad[s:s + step] = ctx.kernels.run(1, *args) if ctx.kernels else _backward_chunk(*args)
        return grad, None, None, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   kernels: ChunkKernels | None = KERNELS) -> torch.Tensor:
    """log_softmax(logits / T) at the target tokens; logits [B, T, V], targets [B, T] -> [B, T] in float32.
    Computed in chunks of rows (see `_TokenLogprobs`), differentiable with respect to the logits."""
    flat, _ = _TokenLogprobs.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), temperature, False,
                                   kernels)
    return flat.view(targets.shape)


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                               kernels: ChunkKernels | None = KERNELS) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` and the entropy of softmax(logits / T) at every position ([B, T] float32 each; the
    entropy carries no gradient), in one pass over the logits: what a training forward needs."""
    flat, entropy = _TokenLogprobs.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), temperature,
                                         True, kernels)
    return flat.view(targets.shape), entropy.view(targets.shape)


def forward_logits(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """[B, L-1-start, V] logits of positions start..L-2 (the ones that can predict a completion target), made
    contiguous by the model itself: `logits_to_keep` applies its LM head to those positions only, so no slice of
    the logits has to be copied (and copied back in the backward). No attention mask: the batch is right-padded
    and attention causal, so no real position can see a padding one; without a mask attention runs its causal
    kernel (flash on a GPU) instead of a masked one (whose cuDNN backward returns NaN at some widths:
    `rlpost.learner.actor.use_safe_attention_kernels`). Padding positions get finite values that the completion
    mask drops; real positions get exactly the masked forward's (`tests/test_packing.py`)."""
    keep = torch.arange(batch.start, batch.input_ids.shape[1] - 1, device=batch.input_ids.device)
    return model(input_ids=batch.input_ids, use_cache=False, logits_to_keep=keep).logits


def unpack(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """Per-row lists of the masked entries (the completion tokens' values, in order)."""
    return [row[m.bool()].tolist() for row, m in zip(values.cpu(), mask.cpu(), strict=True)]


def repack(values: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """The inverse of `unpack`: per-row completion values scattered into a [B, L-1] tensor at the mask's places."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for row, vals in enumerate(values):
        out[row, mask[row].bool()] = torch.tensor(vals, dtype=out.dtype, device=out.device)
    return out


@torch.no_grad()
def per_completion_token(fn: Callable[[PackedBatch], torch.Tensor], prompts: list[list[int]],
                         completions: list[list[int]], pad_id: int, device: torch.device | str,
                         batch_size: int = 16) -> list[list[float]]:
    """`fn` (a packed batch -> [b, L-1] per-token values, e.g. logprobs) over batches of `batch_size` sequences,
    returned per sequence for its completion tokens only."""
    out: list[list[float]] = []
    for i in range(0, len(prompts), batch_size):
        batch = pack(prompts[i:i + batch_size], completions[i:i + batch_size], pad_id).to(device)
        out.extend(unpack(fn(batch), batch.completion_mask))
    return out


def sequence_logprobs(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]],
                      temperature: float, pad_id: int, device: torch.device | str,
                      batch_size: int = 16) -> list[list[float]]:
    return per_completion_token(lambda b: token_logprobs(forward_logits(model, b), b.targets, temperature),
                                prompts, completions, pad_id, device, batch_size)
