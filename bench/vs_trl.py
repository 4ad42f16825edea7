"""One GRPO step of rlpost next to one of TRL's `GRPOTrainer`: same model, prompts, group size, max new tokens,
micro-batch, optimizer and loss, on the same machine, in one run of this script.

    python -m bench.vs_trl --model $KIT_MODEL --device cuda            # SmolLM2 recipe sizes; TRL on vLLM colocate
    python -m bench.vs_trl --model TINY_DIR --device cpu --prompts 4 --group 4 --new-tokens 32 --micro 4

Each side runs in a fresh process (`--worker rlpost|trl`), one after the other, for `--steps` optimizer steps; the
first `--warmup` steps (start-up, CUDA graphs, allocator growth) are excluded and the rest summarised as median
(min-max). rlpost is the real product path (`rlpost.train.run`: Ray actors, vLLM or HF engine, DeepSpeed learner,
weight sync); TRL is `GRPOTrainer.train()` as its docs set it up.

Shared settings: the first prompts of GSM8K train in file order (no shuffling on either side, so step k sees the same
prompts), rendered with the model's chat template; the GSM8K reward of `rewards/gsm8k.py` (TRL calls it in-line,
rlpost in its reward workers); temperature 1, top-p 1; GRPO with group-std advantages, clipped ratio 0.2, k3 KL to
the reference with beta 0.04 (so both run a reference forward), per-sequence token mean (TRL `loss_type="grpo"`);
AdamW at constant lr with rlpost's betas and weight decay, grad clip 1.0; no gradient checkpointing; fp32 master
weights (GPU: rlpost trains bf16 under DeepSpeed with fp32 masters, TRL loads fp32 and autocasts to bf16).
On the GPU both generate with vLLM (TRL's `vllm_mode="colocate"`, sleep mode on, the same memory share as rlpost's
engine); on the CPU both generate with HF transformers.

Phases. rlpost logs its own: generate, reward, experience (reference logprobs, advantages), train (forward, backward,
optimizer), sync (engine sleep/wake and weight transfer). TRL's are timed here by wrapping its methods:
`_generate_single_turn` (generate; its weight sync happens inside and is subtracted), `vllm_generation.sync_weights`
(sync), `_calculate_rewards` (reward), `_generate_and_score_completions` minus those (experience), and the rest of the
optimizer step (train). Step = wall time between consecutive optimizer steps (CUDA synchronised on the GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import add_results_argument, append_section, command_line, machine, markdown_table, median_range

REPO = Path(__file__).resolve().parent.parent

PHASES = ("generate", "sync", "reward", "experience", "train", "step")
RLPOST_KEYS = {"generate": "time/generate", "sync": "time/sync", "reward": "time/reward",
               "experience": "time/experience", "train": "time/train", "step": "perf/step_seconds"}
BETA, CLIP, WEIGHT_DECAY, BETAS, GRAD_CLIP = 0.04, 0.2, 0.0, (0.9, 0.999), 1.0


# ---- rlpost ---------------------------------------------------------------------------------------------------
def run_rlpost(args: argparse.Namespace, run_dir: str) -> list[dict[str, float]]:
    from rlpost.train import compose_config, run

    cluster = args.rlpost_cluster or ("single_gpu" if args.device == "cuda" else "debug_cpu")
    cfg = compose_config([
        "experiment=gsm8k_grpo_smollm2", f"cluster={cluster}", f"model.path={args.model}",
        f"trainer.run_dir={run_dir}", f"trainer.steps={args.steps}", f"trainer.prompts_per_step={args.prompts}",
        f"algo.group_size={args.group}", f"rollout.max_new_tokens={args.new_tokens}",
        f"learner.micro_batch_size={args.micro}", f"learner.lr={args.lr}", "learner.warmup_steps=0",
        "learner.lr_schedule=constant", f"learner.weight_decay={WEIGHT_DECAY}", f"learner.grad_clip={GRAD_CLIP}",
        f"algo.kl_coef={BETA}", f"algo.clip_low={CLIP}", f"algo.clip_high={CLIP}", "data.shuffle=false",
        "eval.enabled=false", "logger.progress=false", "logger.wandb.mode=disabled", *args.rlpost_override])
    history = run(cfg)
    # `learner`: the part of `train` spent inside the learner's train_step (the rest is the driver's call, the
    # transfer of the items and the colocated hand-back of memory).
    return [{**{phase: float(h[key]) for phase, key in RLPOST_KEYS.items()}, "learner": float(h["learner/seconds"])}
            for h in history]


# ---- TRL ------------------------------------------------------------------------------------------------------
def gsm8k_rows(model: str, n: int) -> list[dict]:
    """The first `n` GSM8K train problems as chat messages (rlpost's own rendering: question + instruction)."""
    from transformers import AutoTokenizer

    from rlpost.config import DataConfig
    from rlpost.data.prompts import build_prompts, load_rows

    data = DataConfig()
    prompts, _ = build_prompts(load_rows("gsm8k", field="data.train_path")[:n], AutoTokenizer.from_pretrained(model),
                               data.prompt_key, data.instruction, data.system_prompt, data.max_prompt_tokens)
    return [{"prompt": p.messages, "answer": p.columns["answer"]} for p in prompts]


def gsm8k_reward():
    """`rewards/gsm8k.py`'s score in TRL's reward signature: conversational prompts give completions as message
    lists, rlpost's reward functions take text."""
    from rlpost.rewards.loader import load_reward_fn

    score = load_reward_fn({"path": "rewards/gsm8k.py"}, 0)  # loaded as rlpost loads it

    def gsm8k(prompts: list, completions: list, answer: list[str], **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return score(prompts, texts, answer)

    return gsm8k


def run_trl(args: argparse.Namespace, run_dir: str) -> list[dict[str, float]]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlpost.config import DataConfig

    cuda = args.device == "cuda"
    totals: dict[str, float] = {}
    steps: list[dict[str, float]] = []

    def timed(name: str, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    class TimedGRPOTrainer(GRPOTrainer):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            if getattr(self, "vllm_generation", None) is not None:
                self.vllm_generation.sync_weights = timed("sync", self.vllm_generation.sync_weights)

        def _generate_single_turn(self, *a, **kw):
            return timed("generate+sync", super()._generate_single_turn)(*a, **kw)

        def _calculate_rewards(self, *a, **kw):
            return timed("reward", super()._calculate_rewards)(*a, **kw)

        def _generate_and_score_completions(self, *a, **kw):
            return timed("rollout", super()._generate_and_score_completions)(*a, **kw)

    class StepClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            sync, gen = totals.get("sync", 0.0), totals.get("generate+sync", 0.0) - totals.get("sync", 0.0)
            reward = totals.get("reward", 0.0)
            experience = totals.get("rollout", 0.0) - gen - sync - reward
            step = now - self.t
            steps.append({"generate": gen, "sync": sync, "reward": reward, "experience": experience,
                          "train": step - gen - sync - reward - experience, "step": step})
            totals.clear()
            self.t = now

    completions = args.prompts * args.group
    config = GRPOConfig(
        output_dir=run_dir, max_steps=args.steps, per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=completions // args.micro, num_generations=args.group,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        weight_decay=WEIGHT_DECAY, max_grad_norm=GRAD_CLIP, beta=BETA, epsilon=CLIP, loss_type="grpo",
        scale_rewards="group", num_iterations=1, shuffle_dataset=False, gradient_checkpointing=False,
        bf16=cuda, use_cpu=not cuda, model_init_kwargs={"dtype": torch.float32}, seed=0, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True,
        use_vllm=cuda, vllm_mode="colocate", vllm_enable_sleep_mode=True,
        vllm_gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_max_model_length=DataConfig().max_prompt_tokens + args.new_tokens)
    dataset = Dataset.from_list(gsm8k_rows(args.model, args.prompts * args.steps))
    trainer = TimedGRPOTrainer(model=args.model, reward_funcs=[gsm8k_reward()], args=config, train_dataset=dataset,
                               callbacks=[StepClock()])
    trainer.train()
    return steps


# ---- driver ---------------------------------------------------------------------------------------------------
def summarise(steps: list[dict[str, float]], warmup: int) -> dict[str, list[float]]:
    """Per phase: its seconds in each step after the warm-up."""
    kept = steps[warmup:]
    if not kept:
        raise ValueError(f"--steps must exceed --warmup ({warmup}); only {len(steps)} steps ran")
    return {p: [s[p] for s in kept] for p in kept[0]}


def table(ours: dict[str, list[float]], peer: dict[str, list[float]]) -> str:
    rows = []
    for p in PHASES:
        a, b = statistics.median(ours[p]), statistics.median(peer[p])
        rows.append([p, median_range(ours[p]), median_range(peer[p]), f"{b / a:.2f}x" if a > 1e-4 else "-"])
    return markdown_table(["phase", "rlpost s median (min-max)", "TRL s median (min-max)", "TRL / rlpost"], rows)


def verdict(ours_s: float, peer_s: float) -> str:
    """How rlpost's median step compares with TRL's, in whichever direction it goes."""
    if ours_s <= peer_s:
        return f"rlpost's step is {peer_s / ours_s:.2f}x faster than TRL's"
    return f"rlpost's step is {ours_s / peer_s:.2f}x slower than TRL's"


def run_worker(side: str, argv: list[str], out: Path) -> list[dict[str, float]]:
    cmd = [sys.executable, "-m", "bench.vs_trl", "--worker", side, "--out", str(out), *argv]
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"vs_trl: the {side} side failed (exit {proc.returncode}); its log is above")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("KIT_MODEL", ""), help="model folder (HF format)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the summary")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=384)
    parser.add_argument("--micro", type=int, default=32, help="sequences per forward/backward")
    parser.add_argument("--lr", type=float, default=2e-6)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35, help="both sides' vLLM share")
    parser.add_argument("--rlpost-override", action="append", default=[], help="extra rlpost override (repeatable)")
    parser.add_argument("--rlpost-cluster", default="",
                        help="rlpost's cluster preset (default single_gpu on cuda, debug_cpu on cpu); split puts its "
                             "engines on a GPU of their own, for trainer.max_staleness=1 (TRL stays colocated)")
    parser.add_argument("--sides", default="rlpost,trl")
    add_results_argument(parser)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.prompts * args.group) % args.micro:
        parser.error(f"--micro {args.micro} must divide prompts x group = {args.prompts * args.group}")

    if args.worker:
        with tempfile.TemporaryDirectory(prefix=f"vs-trl-{args.worker}-") as run_dir:
            steps = (run_rlpost if args.worker == "rlpost" else run_trl)(args, run_dir)
        Path(args.out).write_text(json.dumps(steps))
        return

    argv = sys.argv[1:]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="vs-trl-") as tmp:
        for side in args.sides.split(","):
            t = time.perf_counter()
            steps = run_worker(side, argv, Path(tmp) / f"{side}.json")
            wall = time.perf_counter() - t
            for i, s in enumerate(steps, 1):
                print(f"{side} step {i}: " + " ".join(f"{p}={s[p]:.3f}" for p in PHASES), flush=True)
            print(f"{side} process wall time (start-up, {len(steps)} steps, shut-down): {wall:.1f} s", flush=True)
            results[side] = summarise(steps, args.warmup)
    if set(results) != {"rlpost", "trl"}:
        return
    phase_table = table(results["rlpost"], results["trl"])
    head = (f"{machine(args.device)}; {Path(args.model).name}, {args.prompts} prompts x {args.group}, "
            f"{args.new_tokens} new tokens, micro-batch {args.micro}; steps {args.warmup + 1}-{args.steps}; "
            f"TRL generation: {'vLLM colocate' if args.device == 'cuda' else 'HF transformers'}"
            + (f"; rlpost cluster={args.rlpost_cluster}" if args.rlpost_cluster else ""))
    ours, peer = results["rlpost"], results["trl"]
    summary = verdict(statistics.median(ours["step"]), statistics.median(peer["step"]))
    print("\n" + head + "\n\n" + phase_table + f"\n\nrlpost's train phase: {statistics.median(ours['train']):.3f} s, "
          f"of which {statistics.median(ours['learner']):.3f} s inside LearnerRank.train_step (medians)\n{summary}")
    if args.results:
        append_section(Path(args.results), "rlpost vs TRL GRPOTrainer, one GRPO step", head,
                       command_line("bench.vs_trl"), phase_table, summary + ".")

if __name__ == "__main__":
    main()
