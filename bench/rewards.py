"""Reward throughput: the math-verify verifier (rewards/gsm8k.py) and a reward-model scorer, on GSM8K answers.

    python -m bench.rewards [--items 400] [--workers 1 2] [--repeat 5] [--rm-items 64] [--results bench/RESULTS.md]

Verifier: the completions are GSM8K training solutions scored against their own gold answers. Every third one
has its '####' line replaced by "So the answer is N." (math-verify must then extract the answer from the whole
text, its slow path) and every fifth one ends in a wrong number, so the scores are checked too. It is timed as a
plain loop in this process (one call per item, as the pool makes them) and through `RewardManager` (the pool
of worker processes the reward actors use) with 1, 2, ... workers; the pool's start-up is not timed. Each mode
runs `--repeat` times and the fastest run is reported (the least disturbed by other load on a shared machine).
The CPU column is the CPU time of that run over every process involved (this one plus the pool's workers, from
/proc), per item: unlike the wall clock it hardly moves with other load, so it shows what the pool costs.

A last line gives the pool's own cost per call: a no-op plug-in through the same path, 1 worker.

Reward model: `RewardModelScorer` with a tiny random Llama sequence-classification head (the test model's
shape, 2 layers, hidden 64) on CPU, scoring GSM8K question + solution conversations through the chat template:
it measures the scorer's own overhead (templating, tokenising, batching), not a real RM's compute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in the reward actors: one compute thread per process
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers imports DeepSpeed, which would probe for GPUs

from bench.common import add_results_argument, append_section, command_line, markdown_table  # noqa: E402
from rlpost.config import RewardConfig, RewardFunctionConfig  # noqa: E402
from rlpost.data.prompts import GSM8K_DIR  # noqa: E402
from rlpost.rewards import RewardManager, load_reward_fn  # noqa: E402

GSM8K = {"path": "rewards/gsm8k.py", "name": "score"}


def gsm8k_items(n: int) -> tuple[list[str], list[str], list[dict], list[float]]:
    """(questions, completions, columns, expected scores) from the first `n` GSM8K training rows."""
    rows = [json.loads(line) for line in (GSM8K_DIR / "train.jsonl").read_text().splitlines()[:n]]
    questions, completions, columns, expected = [], [], [], []
    for i, row in enumerate(rows):
        body, gold = row["answer"].rsplit("####", 1)
        gold = gold.strip()
        wrong = i % 5 == 0
        final = str(Decimal(gold.replace(",", "")) + 1) if wrong else gold
        completions.append(body + (f"#### {final}" if i % 3 else f"So the answer is {final}."))
        questions.append(row["question"])
        columns.append({"answer": row["answer"]})
        expected.append(0.0 if wrong else 1.0)
    return questions, completions, columns, expected


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of `pids` so far."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)": state is fields[0]
        ticks += int(fields[11]) + int(fields[12])
    return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")


def timed(run, pids: list[int], repeat: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of `repeat` runs."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        t, cpu = time.perf_counter(), cpu_seconds(pids)
        run()
        best = min(best, (time.perf_counter() - t, cpu_seconds(pids) - cpu))
    return best


def bench_verifier(items: int, workers: list[int], repeat: int) -> list[tuple[str, float, float]]:
    questions, completions, columns, expected = gsm8k_items(items)
    fn = load_reward_fn(RewardFunctionConfig(**GSM8K), 0)
    fn(questions[:1], completions[:1], answer=[columns[0]["answer"]])  # warm math-verify's lazy imports

    def loop() -> None:
        scores = [fn([q], [c], answer=[col["answer"]])[0]
                  for q, c, col in zip(questions, completions, columns, strict=True)]
        assert scores == expected, "the in-process scores differ from the expected ones"

    rows = [("in-process loop", *timed(loop, [], repeat))]
    for w in workers:
        with RewardManager(RewardConfig(functions=[GSM8K], num_workers=w)) as manager:
            assert manager.pool.wait_ready(timeout_s=60)
            manager.score(questions[:w], completions[:w], columns[:w])  # every worker imported and warm

            def pool() -> None:
                result = manager.score(questions, completions, columns)
                assert result.total == expected and result.errors == result.timeouts == 0

            pids = [worker.proc.pid for worker in manager.pool._workers]
            rows.append((f"pool, {w} worker{'s' if w > 1 else ''}", *timed(pool, pids, repeat)))
    return rows


def bench_pool_overhead(items: int, repeat: int) -> float:
    """Calls/s of a plug-in that does nothing, through `RewardManager` with 1 worker (GSM8K-sized arguments)."""
    questions, completions, columns, _ = gsm8k_items(items)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "noop.py")
        with open(path, "w") as f:
            f.write("def score(prompts, completions, **_):\n    return [0.0] * len(completions)\n")
        with RewardManager(RewardConfig(functions=[{"path": path}], num_workers=1)) as manager:
            assert manager.pool.wait_ready(timeout_s=60)
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                manager.score(questions, completions, columns)
                best = min(best, time.perf_counter() - t)
    return items / best


def bench_reward_model(items: int, batch_tokens: int) -> tuple[float, int]:
    """Seconds to score `items` GSM8K conversations with a tiny random RM on CPU, and the tokens scored."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rlpost.models import build_once, build_tiny_model, cache_dir
    from rlpost.rewards.reward_model import RewardModelScorer

    torch.set_num_threads(1)
    policy = build_once(cache_dir() / "bench-models" / "tiny-llama", lambda tmp: build_tiny_model(tmp, seed=0))
    tok = AutoTokenizer.from_pretrained(policy)
    with tempfile.TemporaryDirectory() as rm_dir:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                             pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        LlamaForSequenceClassification(config).save_pretrained(rm_dir)
        tok.save_pretrained(rm_dir)
        scorer = RewardModelScorer(rm_dir, "float32", batch_tokens, "cpu")
        questions, completions, _, _ = gsm8k_items(items)
        messages = [[{"role": "user", "content": q}] for q in questions]
        tokens = sum(len(x) for x in scorer.tokenize(messages, completions))
        scorer.score(messages[:4], completions[:4])  # warm-up
        t = time.perf_counter()
        scorer.score(messages, completions)
        return time.perf_counter() - t, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rm-items", type=int, default=64)
    parser.add_argument("--rm-batch-tokens", type=int, default=8192)
    add_results_argument(parser)
    args = parser.parse_args()

    where = (f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or platform.system()}); "
             f"load average {os.getloadavg()[0]:.2f}")
    print(f"machine: {where}")
    rows = bench_verifier(args.items, args.workers, args.repeat)
    base = args.items / rows[0][1]
    title = f"math-verify on {args.items} GSM8K answers (rewards/gsm8k.py), best of {args.repeat}"
    table = markdown_table(["mode", "seconds", "CPU ms/item", "items/s", "vs in-process"],
                           [[mode, f"{seconds:.2f}", f"{1000 * cpu / args.items:.2f}", f"{args.items / seconds:.0f}",
                             f"{args.items / seconds / base:.2f}x"] for mode, seconds, cpu in rows])
    print(f"\n{title}\n\n{table}")
    notes = [f"pool round trip alone (no-op plug-in, 1 worker): {bench_pool_overhead(args.items, args.repeat):.0f} "
             "calls/s"]
    if args.rm_items:
        seconds, tokens = bench_reward_model(args.rm_items, args.rm_batch_tokens)
        notes.append(f"reward-model scorer (tiny random Llama RM, CPU, 1 thread, batch_tokens={args.rm_batch_tokens}): "
                     f"{args.rm_items} sequences ({tokens} tokens) in {seconds:.2f} s = {args.rm_items / seconds:.0f} "
                     f"sequences/s, {tokens / seconds:.0f} tokens/s")
    print("".join(f"\n{note}\n" for note in notes), end="")
    if args.results:
        append_section(Path(args.results), "Rewards: math-verify verifier and reward-model scorer", f"{title}; {where}",
                       command_line("bench.rewards"), table, "\n\n".join(notes))


if __name__ == "__main__":
    main()
