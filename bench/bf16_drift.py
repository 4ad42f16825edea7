"""How far the bf16 working copy of a model moves under AdamW with fp32 master weights, step by step, at a given
learning rate: the setting of every bf16 run of the learner (DeepSpeed bf16 keeps fp32 masters and trains and
samples with their bf16 copy).

    python -m bench.bf16_drift --lr 2e-6 --steps 10      # embedded SmolLM2-135M, CPU, ~1 min a step on 2 cores

Each step: a policy-gradient-shaped loss (random +-1 advantage per sequence on random-token sequences), AdamW on
the fp32 masters, the bf16 copy re-cast from them. Columns: bf16 values that differ from the start, the largest
master drift, and the k3 KL on held-out sequences of the bf16 copy to the bf16 start (what the learner logs as
actor/kl) and of the fp32 masters to the fp32 start (the model the optimizer thinks it has). RoPE buffers stay
fp32 in both (as `fp32_buffers_kept` does in the learner). Measured on 2026-11-23: see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import add_results_argument, append_section, command_line, markdown_table
from rlpost.models import default_model_path


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def k3(ref: torch.Tensor, cur: torch.Tensor) -> float:
    d = ref - cur
    return float((d.exp() - d - 1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--lr", type=float, default=2e-6)
    parser.add_argument("--steps", type=int, default=10)
    add_results_argument(parser)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = args.model or default_model_path()
    master = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    start32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    work = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(torch.bfloat16)
    for (_, buf), (_, buf32) in zip(work.named_buffers(), start32.named_buffers(), strict=True):
        buf.data = buf32.data.clone()  # RoPE frequencies in fp32, as in the learner
    start16 = [p.detach().clone() for p in work.parameters()]
    optimizer = torch.optim.AdamW(master.parameters(), lr=args.lr, weight_decay=0.0)
    low, high = 100, min(20000, master.config.vocab_size)
    train_ids, held_ids = torch.randint(low, high, (8, 96)), torch.randint(low, high, (4, 96))
    with torch.no_grad():  # each copy against its own start: the learner's reference is in the training dtype
        ref32, ref16 = token_logprobs(start32, held_ids), token_logprobs(work, held_ids)
    total = sum(p.numel() for p in start16)
    title = f"model {Path(path).name}, {total / 1e6:.0f}M parameters, lr {args.lr:g}"
    header = ["step", "bf16 values changed", "share", "max master drift", "KL bf16 copy", "KL fp32 masters",
              "bf16 / fp32"]
    print(f"{title}\n\n{markdown_table(header, [])}")
    rows = []
    for step in range(args.steps + 1):
        with torch.no_grad():
            changed = sum(int((p != q).sum()) for p, q in zip(work.parameters(), start16, strict=True))
            drift = max(float((p - q).abs().max()) for p, q in zip(master.parameters(), start32.parameters(),
                                                                   strict=True))
            kl16, kl32 = k3(ref16, token_logprobs(work, held_ids)), k3(ref32, token_logprobs(master, held_ids))
        ratio = f"{kl16 / kl32:.1f}" if kl32 > 0 else "-"
        rows.append([str(step), str(changed), f"{changed / total:.2%}", f"{drift:.2e}", f"{kl16:.2e}", f"{kl32:.2e}",
                     ratio])
        print("| " + " | ".join(rows[-1]) + " |", flush=True)  # row by row: a step takes a minute on 2 cores
        if step == args.steps:
            break
        work.zero_grad()
        advantages = torch.randn(train_ids.shape[0], 1).sign()
        (-(token_logprobs(work, train_ids) * advantages).mean()).backward()
        for p, m in zip(work.parameters(), master.parameters(), strict=True):
            m.grad = p.grad.float()
        optimizer.step()
        with torch.no_grad():
            for p, m in zip(work.parameters(), master.parameters(), strict=True):
                p.copy_(m.to(torch.bfloat16))
    if args.results:
        append_section(Path(args.results), "bf16 drift under AdamW with fp32 masters", title,
                       command_line("bench.bf16_drift"), markdown_table(header, rows))


if __name__ == "__main__":
    main()
