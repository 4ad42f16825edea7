"""One measured GSM8K learning run, in one sitting: GSM8K before, training, GSM8K after, the report card.

    python -m bench.learn_gsm8k grpo --model /models/qwen2.5-coder-0.5b-instruct
    python -m bench.learn_gsm8k ppo --model DIR --experiment gsm8k_ppo_qwen05b -- trainer.max_minutes=20
    python -m bench.learn_gsm8k debug --model DIR --engine hf --limit 8 --experiment gsm8k_grpo_debug   # CPU

1. Before: `bench/gsm8k.py` on `--model` (the full test set, greedy, 512 tokens; `--limit N` for a glimpse).
2. Training: `rlpost-train experiment=EXPERIMENT cluster=CLUSTER model.path=MODEL trainer.run_dir=RUN
   trainer.final_checkpoint=false [overrides]` (CLUSTER: `--cluster`, default single_gpu; no checkpoint at the
   end: the exported policy is what is measured, and the optimizer state's write took 20-45 s; an override
   `trainer.final_checkpoint=true` keeps one to continue from), while the
   GPUs' used memory is sampled every second (`nvidia-smi`; the peak is the whole machine's, which during the
   job is the job's).
3. After: `bench/gsm8k.py` on the exported policy `RUN/hf_model`, with a model column naming the run
   ("qwen2.5-coder-0.5b-instruct after gsm8k_grpo_qwen05b, 60 steps").
4. The report card (`RUN/report.md` and its plots) is copied to `--runs/NAME` (default bench/runs/NAME), and
   one row lands in the learning-runs table of `--results` (default bench/RESULTS.md): GSM8K before -> after,
   minutes of training (evaluations included) and of the whole job, steps, samples generated, peak GPU memory,
   and the collapse check: the best and the last 10-step mean of train accuracy (issue 14's criterion: the last
   within 3 points of the best).

Each phase's output goes to `RUN/learn_<phase>.log` as well as to the console. A failed phase stops the script
with one line naming the phase and its log; what finished stays (the run folder, rows already written).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

from bench.common import append_row, machine

ROOT = Path(__file__).resolve().parent.parent
RESULT_LINE = re.compile(r"^gsm8k pass@1 correct n: ([0-9.]+) (\d+) (\d+)$", re.M)  # bench/gsm8k.py's last line
RUNS_SECTION = """## GSM8K learning runs (`bench/learn_gsm8k.py`)

Protocol: bench/learn_gsm8k.py's docstring; GSM8K by bench/gsm8k.py's protocol (the full test set, greedy, 512
new tokens) before and after. Train minutes: training as the run's `time/wall` counts it (evaluations during
training included, start-up not); job minutes: the whole `rlpost-train` process. Samples: completions generated
for training. One row per run."""
RUNS_HEADER = ("| date | machine | run | algorithm | model | GSM8K before -> after | train min | job min | steps "
               "| samples | peak GPU memory GB | train acc best / last 10 steps | command |\n"
               "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")


class GpuMemoryPeak:
    """The highest used memory summed over the machine's GPUs, sampled every `interval` s with nvidia-smi
    while running (a context manager). `peak_gb` is None where there is no nvidia-smi (CPU machines)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval, self.peak_gb = interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (FileNotFoundError, subprocess.TimeoutExpired):
                return
            used = sum(float(v) for v in out.split()) / 1024  # MiB -> GiB
            self.peak_gb = max(self.peak_gb or 0.0, used)
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_phase(name: str, cmd: list[str], log: Path) -> str:
    """Run `cmd`, echoing its output to the console and to `log`; returns the output. A failure is one line."""
    print(f"[learn_gsm8k] {name}: {shlex.join(cmd)}", flush=True)
    lines = []
    with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                               cwd=ROOT) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
            lines.append(line)
    if proc.returncode != 0:
        raise SystemExit(f"bench/learn_gsm8k.py: error: the {name} phase failed (exit {proc.returncode}); see {log}")
    return "".join(lines)


def gsm8k_accuracy(output: str) -> tuple[float, int, int]:
    """(pass@1, correct, n) from bench/gsm8k.py's output."""
    found = RESULT_LINE.findall(output)
    if not found:
        raise SystemExit("bench/learn_gsm8k.py: error: bench/gsm8k.py printed no result line")
    pass1, hits, n = found[-1]
    return float(pass1), int(hits), int(n)


def add_before_arguments(parser: argparse.ArgumentParser) -> None:
    """`--skip-before --before 'PASS1 CORRECT N'`: a GSM8K "before" measured earlier (a lease's minutes saved)."""
    parser.add_argument("--skip-before", action="store_true", help="reuse --before instead of measuring it")
    parser.add_argument("--before", default="", help="with --skip-before: 'PASS1 CORRECT N' measured earlier")


def known_before(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, int, int] | None:
    """The (pass@1, correct, n) that `--skip-before --before` gives, None without `--skip-before`; a malformed
    `--before` is one line at start."""
    if not args.skip_before:
        return None
    fields = args.before.split()
    if len(fields) != 3:
        parser.error(f"--skip-before needs --before 'PASS1 CORRECT N' (got {args.before!r})")
    return float(fields[0]), int(fields[1]), int(fields[2])


def summarize(rows: list[dict], group_size: int) -> dict[str, float]:
    """Steps trained, completions generated for training, training minutes and optimizer updates skipped (for a
    non-finite loss or gradient norm; the policy's and the critic's), from a run's metrics rows."""
    steps = [r for r in rows if r["step"] > 0]
    walls = [r["time/wall"] for r in rows if r.get("time/wall") is not None]
    return {"steps": len(steps), "samples": int(sum(r.get("sampling/prompts", 0) for r in steps)) * group_size,
            "train_minutes": walls[-1] / 60 if walls else float("nan"),
            "skipped_updates": int(sum(r.get(f"{group}/skipped_updates") or 0 for r in steps
                                       for group in ("actor", "critic")))}


def accuracy_hold(rows: list[dict], window: int = 10) -> tuple[float, float]:
    """(best, last) `window`-step mean of train accuracy. A single step's accuracy is noisy (64 prompts: +-6
    points), so collapse is judged on window means: the run holds when the last is within 3 points of the best.
    Fewer steps than `window`: both are the mean of all of them."""
    acc = [r["accuracy"] for r in rows if r["step"] > 0 and r.get("accuracy") is not None]
    if not acc:
        return float("nan"), float("nan")
    w = min(window, len(acc))
    means = [sum(acc[i:i + w]) / w for i in range(len(acc) - w + 1)]
    return max(means), means[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="python -m bench.learn_gsm8k NAME --model DIR [options] [-- overrides]")
    parser.add_argument("name", help="the run's name: its folder under --runs and its row in --results")
    parser.add_argument("--model", required=True, help="Hugging Face model folder to start from")
    parser.add_argument("--experiment", default="gsm8k_grpo_qwen05b")
    parser.add_argument("--cluster", default="single_gpu", help="the cluster preset of the training run")
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="bench/gsm8k.py's engine")
    parser.add_argument("--limit", type=int, default=0, help="GSM8K before/after on the first N problems (0 = all)")
    add_before_arguments(parser)
    parser.add_argument("--run-dir", default="", help="default: /tmp/rlpost-learn-NAME")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--runs", default=str(ROOT / "bench" / "runs"), help="the report card goes to RUNS/NAME")
    argv = sys.argv[1:] if argv is None else argv
    ours, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    before = known_before(parser, args)

    model = str(Path(args.model).resolve())
    run = Path(args.run_dir or f"/tmp/rlpost-learn-{args.name}").resolve()
    if run.exists():
        raise SystemExit(f"bench/learn_gsm8k.py: error: --run-dir {run} exists; remove it or pick another NAME")
    run.mkdir(parents=True)
    results = str(Path(args.results).resolve())
    gsm8k = [sys.executable, "-m", "bench.gsm8k", "--engine", args.engine, "--limit", str(args.limit),
             "--results", results] + (["--enforce-eager"] if args.engine == "vllm" else [])
    base = Path(model).name

    if before is None:
        out = run_phase("before", gsm8k + ["--model", model, "--label", f"{base} (before)"], run / "learn_before.log")
        before = gsm8k_accuracy(out)

    train = [sys.executable, "-m", "rlpost.train", f"experiment={args.experiment}", f"cluster={args.cluster}",
             f"model.path={model}",
             f"trainer.run_dir={run}", "logger.progress=false", "trainer.final_checkpoint=false", *overrides]
    t0 = time.perf_counter()
    with GpuMemoryPeak() as memory:
        run_phase("train", train, run / "learn_train.log")
    job_minutes = (time.perf_counter() - t0) / 60

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    algo = OmegaConf.load(run / "config.yaml").algo
    done = summarize(rows, algo.group_size)
    best, last = accuracy_hold(rows)
    label = f"{base} after {args.experiment}, {done['steps']} steps"
    out = run_phase("after", gsm8k + ["--model", str(run / "hf_model"), "--label", label], run / "learn_after.log")
    after = gsm8k_accuracy(out)

    card = Path(args.runs) / args.name
    shutil.rmtree(card, ignore_errors=True)
    (card / "plots").mkdir(parents=True)
    shutil.copy(run / "report.md", card / "report.md")
    for png in (run / "plots").glob("*.png"):
        shutil.copy(png, card / "plots" / png.name)

    peak = f"{memory.peak_gb:.1f}" if memory.peak_gb is not None else "n/a"
    command = "python -m bench.learn_gsm8k " + shlex.join(argv)
    device = "cuda" if memory.peak_gb is not None else "cpu"
    cells = [time.strftime("%Y-%m-%d"), machine(device), args.name, algo.name, label,
             f"{before[0]:.4f} ({before[1]}/{before[2]}) -> {after[0]:.4f} ({after[1]}/{after[2]})",
             f"{done['train_minutes']:.1f}", f"{job_minutes:.1f}", str(done["steps"]), str(done["samples"]), peak,
             f"{best:.3f} / {last:.3f}" + (" (held)" if last >= best - 0.03 else " (fell)"), command]
    append_row(Path(results), RUNS_HEADER, RUNS_SECTION, cells)
    print(f"[learn_gsm8k] {args.name}: GSM8K {before[0]:.4f} -> {after[0]:.4f} after {done['steps']} steps "
          f"({done['train_minutes']:.1f} min of training, {done['samples']} samples, peak GPU memory {peak} GB; "
          f"train accuracy best/last 10-step mean {best:.3f}/{last:.3f}; "
          f"{done['skipped_updates']} updates skipped); "
          f"report card in {card}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
