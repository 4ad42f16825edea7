"""GSM8K test-set accuracy (pass@1, greedy) of a Hugging Face model folder, through an rlpost rollout engine.

    python -m bench.gsm8k --model /models/SmolLM2-135M-Instruct --engine vllm
    python -m bench.gsm8k --model runs/<run>/hf_model --engine hf --limit 100      # CPU works too, slowly

Protocol (fixed, so rows of bench/RESULTS.md compare):
- Problems: the GSM8K test split shipped with rlpost (`gsm8k:test`, 1,319 problems, in file order); with
  `--limit N`, the first N.
- Prompt: exactly the training prompt (`rlpost.data.build_prompts` with `DataConfig`'s defaults): the model's
  chat template around one user message, the question + a blank line + "Solve the problem step by step. Put the
  final numeric answer after '####'."; no system message (the template's default applies); no prompt is dropped.
- Decoding: one greedy completion per problem (temperature 0), at most `--max-new-tokens` new tokens (default 512),
  stopping at the model's EOS.
- Scoring: `rewards/gsm8k.py` (the training reward): the text after the completion's last '####' (else the whole
  completion, from which math-verify extracts the final answer) must equal the reference's '####' answer under
  math-verify; each item has a 10 s timeout in a worker process (a timeout counts as wrong).
- pass@1 = correct / problems.
- `--outcomes FILE` keeps each problem's outcome, so two models can be compared problem by problem
  (bench/paired.py: the difference with its confidence interval and McNemar's test).

It prints a table and appends a row (date, machine, engine, model, n, max new tokens, pass@1, seconds, command)
to `--results` (default bench/RESULTS.md). `--engine vllm` imports vLLM only when asked, so `--engine hf` runs on
a CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench.common import append_row, machine
from rlpost.config import ConfigError, DataConfig, RewardConfig, RewardFunctionConfig
from rlpost.data import build_prompts, load_rows
from rlpost.rewards.manager import RewardManager
from rlpost.rollout.engine import SamplingParams

ROOT = Path(__file__).resolve().parent.parent

RESULT_PREFIX = "gsm8k pass@1 correct n:"
RESULTS_SECTION = "## GSM8K (`bench/gsm8k.py`)\n\nProtocol: bench/gsm8k.py's docstring. One row per run.\n"
RESULTS_HEADER = ("| date | machine | engine | model | n | max new tokens | pass@1 | seconds | command |\n"
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n")


def load_problems(tokenizer, limit: int) -> list:
    """The protocol's prompts (see the module docstring), as rlpost `Prompt`s with the `answer` column."""
    rows = load_rows("gsm8k:test", field="--data")
    if limit:
        rows = rows[:limit]
    data = DataConfig()
    prompts, _ = build_prompts(rows, tokenizer, data.prompt_key, data.instruction, data.system_prompt,
                               max_prompt_tokens=1 << 30)
    return prompts


def score(manager: RewardManager, prompts: list, completions: list[str]) -> list[bool]:
    result = manager.score([p.text for p in prompts], completions, [p.columns for p in prompts])
    return [v > 0 for v in result.components["gsm8k"]]


def make_engine(kind: str, model: str, dtype: str, batch_size: int, enforce_eager: bool = False):
    if kind == "vllm":
        from rlpost.rollout.vllm_engine import VLLMEngine, check_vllm

        try:
            check_vllm()
        except ConfigError as err:  # the same one line, naming this script's flag instead of the config key
            raise ConfigError(f"--engine vllm: {str(err).split(': ', 1)[1]}") from None
        return VLLMEngine(model, dtype, enforce_eager=enforce_eager)
    import torch

    from rlpost.rollout.hf_engine import HFEngine

    return HFEngine(model, dtype, batch_size, "cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--limit", type=int, default=0, help="first N test problems (0 = all 1,319)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="", help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per generate call (hf)")
    parser.add_argument("--enforce-eager", action="store_true", help="vllm: no CUDA graphs (faster start)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="file to append a row to")
    parser.add_argument("--label", default="", help="the model column: which model, and which run made it "
                        "(default: the folder's name)")
    parser.add_argument("--outcomes", default="", help="also write each problem's outcome (JSON: label, correct as "
                        "0/1 in problem order) to this file, for paired comparisons (bench/paired.py)")
    args = parser.parse_args(argv)

    import torch

    from rlpost.models import load_tokenizer, resolve_model_path

    try:
        model = resolve_model_path(args.model)
        dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
        tokenizer = load_tokenizer(model, field="--model")
        prompts = load_problems(tokenizer, args.limit)
        engine = make_engine(args.engine, model, dtype, args.batch_size, args.enforce_eager)
    except ConfigError as err:
        print(f"bench/gsm8k.py: error: {err}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    samples = engine.generate([p.ids for p in prompts], SamplingParams(temperature=0.0,
                                                                       max_new_tokens=args.max_new_tokens))
    gen_seconds = time.perf_counter() - t0
    completions = tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
    with RewardManager(RewardConfig(functions=[RewardFunctionConfig(path=str(ROOT / "rewards" / "gsm8k.py"))],
                                    num_workers=min(4, os.cpu_count() or 1))) as manager:
        correct = score(manager, prompts, completions)
    seconds = time.perf_counter() - t0
    n, hits = len(prompts), sum(correct)
    tokens = sum(len(s.completion_ids) for s in samples)
    truncated = sum(s.finish_reason == "length" for s in samples)

    name = args.label or Path(model).name
    print(f"\n| model | engine | n | correct | pass@1 | truncated | gen tok/s | seconds |\n"
          f"| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
          f"| {name} | {args.engine} | {n} | {hits} | {hits / n:.4f} | {truncated} | {tokens / gen_seconds:.0f} | "
          f"{seconds:.0f} |")
    command = "python -m bench.gsm8k " + shlex.join(argv if argv is not None else sys.argv[1:])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    append_row(Path(args.results), RESULTS_HEADER, RESULTS_SECTION, [
        time.strftime("%Y-%m-%d"), machine(device), args.engine, name, str(n), str(args.max_new_tokens),
        f"{hits / n:.4f}", f"{seconds:.0f}", command])
    print(f"row appended to {args.results}")
    if args.outcomes:
        Path(args.outcomes).write_text(json.dumps({"label": name, "correct": [int(c) for c in correct]}))
    print(f"{RESULT_PREFIX} {hits / n:.4f} {hits} {n}")  # read by bench/learn_gsm8k.py
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
