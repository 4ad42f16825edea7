"""Online or offline? Four ways to spend the same sampling budget on GSM8K, from the same model and prompts.

    python -m bench.online_vs_offline --model /models/qwen2.5-coder-0.5b-instruct            # one H200
    python -m bench.online_vs_offline --model TINY --engine hf --cluster debug_cpu --samples 32 --group 4 \\
        --prompts-per-step 2 --limit 4 --dpo-experiment gsm8k_grpo_debug --grpo-experiment gsm8k_grpo_debug \\
        --verifier tests/rewards_for_tests.py --verifier-name text_length \
        -- rollout.max_new_tokens=16 learner.num_ranks=1 rollout.num_engines=1 eval.limit=4     # CPU smoke test

The question of arXiv 2503.01067 ("All Roads Lead to Likelihood"): does online RL beat offline preference
learning, and does a learnt verifier (the generation-verification gap) explain it? The arms, each from `--model`,
on the first P = SAMPLES / GROUP prompts of GSM8K train, each drawing SAMPLES completions in all:
- (a) offline DPO: `python -m rlpost.pairs` samples GROUP completions per prompt from the initial policy, the
  verifier (`--verifier`: the math check by default; the CPU smoke test uses a dense stand-in) scores them, best
  vs worst (ties skipped) is a pair; `algo=dpo_offline` trains `--offline-epochs` passes over them, no engines.
  `--pairs FILE` takes an earlier run's pair file instead (same model, prompts and samples: a lease saved).
- (b) online DPO (`algo=online_dpo`) with the verifier; dynamic sampling off, so it draws exactly SAMPLES.
- (c) GRPO (`algo=grpo`) with the verifier.
- (d) the two-stage route: `rlpost-train-rm` on (a)'s pairs from the first `--rm-share` of the prompts (those
  samples count towards (d)'s budget), then GRPO on the rest of the budget with that RM as the only reward; the
  verifier only evaluates (a weight-0 reward component that `reward.accuracy` names).
Online arms run `trainer.steps = budget / (prompts_per_step x GROUP)`; every training run also stops at
`--minutes` of training. Recipes: `--dpo-experiment` for (a) and (b), `--grpo-experiment` for (c) and (d)
(the qwen05b ones by default; their comments give sources); every phase's engines get `--kv-cache-gb` of KV
cache (6: the same engines in every arm); `-- overrides` go to every run.

Measured: GSM8K test pass@1 before (once, or `--skip-before --before "PASS1 CORRECT N"` measured earlier) and
after (each arm's exported policy) by `bench/gsm8k.py`'s protocol (`--limit N`: the first N problems); minutes
of training (`time/wall`); samples drawn; held-out pair accuracy of (a)'s DPO implicit reward and of (d)'s RM
(the "verification" side of the gap); each online arm against the best offline run (or `--baseline`) problem
by problem (bench/paired.py: the difference with its 95% interval and McNemar's test). One section with the
table and the plot (pass@1 against samples seen: the full-test before/after of every arm, and the online arms' in-run
`eval/pass@1` curves, on `eval.limit` problems) goes to `--results`; each phase's log is `RUN/<phase>.log`.

Where (d)'s RM runs: `--rm-gpus` (`reward.models[0].num_gpus`; default 1 on a GPU cluster, 0 on a CPU one). On
a colocated `cluster=single_gpu` run any value > 0 puts the RM actor in the GPU bundle of learner and vLLM (it
loads first, so vLLM sizes its cache around it); on a split cluster it gets that many GPUs of its own; 0 scores on
the CPU (slowly for a 0.5B RM).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
import time
from pathlib import Path

from bench.common import append_section, machine, markdown_table, versions
from bench.learn_gsm8k import add_before_arguments, gsm8k_accuracy, known_before, run_phase, summarize
from bench.paired import PairedDifference, paired_difference, wilson_interval
from rlpost.train import compose_config

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"a": "offline DPO", "b": "online DPO", "c": "GRPO", "d": "RM + GRPO"}


def arm_name(key: str, tag: str) -> str:
    """An arm's name in files and tables: its key, and `--tag`'s variant after a dash (a-v2)."""
    return f"{key}-{tag}" if tag else key


def label(name: str) -> str:
    """"(a) offline DPO", or "(a-1ep) offline DPO" for an arm run with `--tag 1ep`."""
    return f"({name}) {ARMS[name[0]]}"


def pair_accuracy_cell(arm: dict) -> str:
    """The held-out pair accuracy with its count and 95% interval where the count was kept."""
    acc, n = arm.get("pair_accuracy"), arm.get("held_out_pairs")
    if acc is None:
        return ""
    if not n:
        return f"{acc:.3f}"
    low, high = wilson_interval(round(acc * n), int(n))
    return f"{acc:.3f} of {int(n)} ({low:.2f}-{high:.2f})"


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def last_value(rows: list[dict], key: str) -> float | None:
    return next((r[key] for r in reversed(rows) if r.get(key) is not None), None)


def held_out(rows: list[dict]) -> dict:
    """An offline run's last held-out pair accuracy and its pair count (DPO's implicit reward, or the RM)."""
    return {"pair_accuracy": last_value(rows, "eval/pair_accuracy"), "held_out_pairs": last_value(rows, "eval/pairs")}


def copy_pairs(source: Path, out: Path, prompts: int) -> int:
    """`--pairs`: an earlier run's pair file (gzip-compressed if it ends in .gz) as this run's `pairs.jsonl`; its
    number of pairs. Refused, in one line, if a row's prompt was not among the first `prompts` this run samples."""
    if not source.is_file():
        raise SystemExit(f"bench/online_vs_offline.py: error: --pairs {source}: no such file")
    text = gzip.decompress(source.read_bytes()).decode() if source.suffix == ".gz" else source.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        index = json.loads(line).get("prompt_index")
        if not isinstance(index, int) or not 0 <= index < prompts:
            raise SystemExit(f"bench/online_vs_offline.py: error: --pairs {source}: row {number} has prompt_index "
                             f"{index!r}, not one of this run's {prompts} prompts (--samples / --group): pass the "
                             f"pairs.jsonl of a run with the same --samples and --group")
    out.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def subset(pairs: Path, out: Path, prompts: int) -> int:
    """The rows of `pairs` whose prompt is among the first `prompts` sampled, written to `out`; their number."""
    rows = [line for line in pairs.read_text().splitlines() if json.loads(line)["prompt_index"] < prompts]
    out.write_text("".join(line + "\n" for line in rows))
    return len(rows)


def plot(arms: dict[str, dict], before: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, arm in arms.items():
        line, = ax.plot([0, arm["samples"]], [before, arm["after"]], "o--",
                        label=f"{label(key)}, bench/gsm8k.py")
        if arm["curve"]:
            ax.plot(*zip(*arm["curve"], strict=True), "-", color=line.get_color(), alpha=0.6,
                    label=f"({key}) in-run eval/pass@1")
    ax.set_xlabel("completions sampled")
    ax.set_ylabel("GSM8K pass@1")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def online_curve(rows: list[dict], group: int, offset: int) -> list[tuple[int, float]]:
    """(samples seen, eval/pass@1) of an online run's evaluations: samples are the prompts sampled so far x group."""
    seen, curve = 0, []
    for r in rows:
        seen += int(r.get("sampling/prompts", 0)) * group
        if r.get("eval/pass@1") is not None:
            curve.append((offset + seen, r["eval/pass@1"]))
    return curve


def phase_commands(args: argparse.Namespace, run: Path, extra: list[str]) -> dict[str, list[str]]:
    """Every phase's command line: `pairs`, the arms `a`-`d` and (d)'s reward model `d_rm`, each training run in
    `run/<phase>`. Built again before each phase, since (a)'s and the RM's steps follow from the pair files the
    earlier phases wrote (`run/pairs.jsonl`, `run/pairs_rm.jsonl`)."""
    n, pps, prompts = args.group, args.prompts_per_step, args.samples // args.group
    per_step, rm_prompts = pps * n, int(args.rm_share * prompts)
    common = [f"cluster={args.cluster}", f"model.path={Path(args.model).resolve()}", f"data.limit={prompts}",
              f"trainer.prompts_per_step={pps}", f"trainer.max_minutes={args.minutes:g}", "logger.progress=false",
              "trainer.final_checkpoint=false",  # the exported policy is what is measured
              f"reward.accuracy={Path(args.verifier).stem}",
              *([f"rollout.kv_cache_gb={args.kv_cache_gb:g}"] if args.kv_cache_gb else []), *extra]

    def verifier(weight: float) -> str:
        return f"reward.functions=[{{path: {args.verifier}, name: {args.verifier_name}, weight: {weight:g}}}]"

    def offline_steps(pairs: Path, epochs: float) -> int:  # passes over the pair file, held-out pairs included
        count = len(pairs.read_text().splitlines()) if pairs.exists() else 0
        return max(1, math.ceil(epochs * count / pps))

    rm_epochs = args.offline_epochs if args.rm_epochs is None else args.rm_epochs
    online = [f"algo.group_size={n}", "algo.dynamic_sampling=false"]
    train = [sys.executable, "-m", "rlpost.train"]
    pairs, rm_pairs = run / "pairs.jsonl", run / "pairs_rm.jsonl"
    grpo_budget = args.samples - (rm_prompts * n if "d" in args.arms else 0)
    dtype = "bfloat16" if args.rm_gpus > 0 else "float32"
    reward_model = (f"reward.models=[{{path: {run / 'd_rm' / 'hf_model'}, normalize: true, num_gpus: "
                    f"{args.rm_gpus:g}, dtype: {dtype}}}]")
    commands = {
        "pairs": [sys.executable, "-m", "rlpost.pairs", f"experiment={args.dpo_experiment}", *common, verifier(1),
                  f"pairs.samples_per_prompt={n}", f"pairs.path={pairs}"],
        "a": train + [f"experiment={args.dpo_experiment}", "algo=dpo_offline", *common, verifier(1),
                      f"pairs.path={pairs}", f"trainer.steps={offline_steps(pairs, args.offline_epochs)}"],
        "b": train + [f"experiment={args.dpo_experiment}", "algo=online_dpo", *common, *online, verifier(1),
                      f"trainer.steps={max(1, args.samples // per_step)}"],
        "c": train + [f"experiment={args.grpo_experiment}", "algo=grpo", *common, *online, verifier(1),
                      f"trainer.steps={max(1, args.samples // per_step)}"],
        "d_rm": [sys.executable, "-m", "rlpost.train_rm", *common, verifier(1), f"pairs.path={rm_pairs}",
                 f"trainer.steps={offline_steps(rm_pairs, rm_epochs)}"],
        "d": train + [f"experiment={args.grpo_experiment}", "algo=grpo", *common, *online, verifier(0),
                      reward_model, f"trainer.steps={max(1, grpo_budget // per_step)}"],
    }
    for key in ("a", "b", "c", "d_rm", "d"):  # the training runs
        commands[key].append(f"trainer.run_dir={run / key}")
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="the model folder every arm starts from (required unless --merge)")
    parser.add_argument("--merge", nargs="+", default=[], metavar="RUN_DIR",
                        help="run nothing: one table and plot from the arms finished in these run folders (e.g. "
                             "--arms ad and --arms bc run in two leases, their folders brought back)")
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="bench/gsm8k.py's engine")
    parser.add_argument("--cluster", default="single_gpu")
    parser.add_argument("--samples", type=int, default=16384, help="completions each arm samples in all")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt, in every arm")
    parser.add_argument("--prompts-per-step", type=int, default=64)
    parser.add_argument("--offline-epochs", type=float, default=2.0,
                        help="(a)'s passes over the pairs (2: about as many optimizer steps as (b) takes), counted "
                             "over the whole pair file: with the held-out tenth left out of training, 2 makes ~2.2 "
                             "passes over the training pairs (kept so for comparable arms)")
    parser.add_argument("--rm-epochs", type=float, default=None,
                        help="(d): the RM's passes over its pairs (default --offline-epochs)")
    parser.add_argument("--rm-share", type=float, default=0.5, help="(d): the budget's share spent on RM pairs")
    parser.add_argument("--pairs", default="",
                        help="(a), (d): train on this pair file (`rlpost.pairs`' jsonl, or .jsonl.gz) instead of "
                             "sampling it again; it must come from --model with the same --samples and --group (an "
                             "earlier run's pairs.jsonl), and its samples still count in each arm's budget")
    parser.add_argument("--rm-gpus", type=float, default=None,
                        help="(d): reward.models[0].num_gpus (default: 1 on a GPU cluster, 0 on a CPU one)")
    parser.add_argument("--minutes", type=float, default=10.0, help="each training run's budget")
    parser.add_argument("--kv-cache-gb", type=float, default=6.0,
                        help="every phase's rollout.kv_cache_gb: one engine memory in all arms (the GRPO recipe's "
                             "own is a share of the GPU, ~47 GB an engine), room for (d)'s reward model beside "
                             "the learner and the engines, and engines that build beside the learner (0 = each "
                             "recipe's own)")
    parser.add_argument("--limit", type=int, default=0, help="GSM8K before/after on the first N problems (0 = all)")
    add_before_arguments(parser)
    parser.add_argument("--verifier", default="rewards/gsm8k.py", help="the verifier's reward file (and label)")
    parser.add_argument("--verifier-name", default="score", help="the function in --verifier")
    parser.add_argument("--dpo-experiment", default="gsm8k_online_dpo_qwen05b")
    parser.add_argument("--grpo-experiment", default="gsm8k_grpo_qwen05b")
    parser.add_argument("--arms", default="abcd", help="which arms to run, e.g. ac")
    parser.add_argument("--baseline", default="",
                        help="the offline arm the online ones are measured against, e.g. a-v2 (default: the "
                             "offline arm, (a) or a tagged variant of it, with the best GSM8K after: online is "
                             "said to beat offline only if it beats the best offline run)")
    parser.add_argument("--tag", default="",
                        help="a variant of the protocol (e.g. --tag 1ep --offline-epochs 1): its arms are kept and "
                             "reported as (a-1ep) ..., beside the protocol's own arms in --merge")
    parser.add_argument("--run-dir", default="/tmp/rlpost-online-vs-offline")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--plot", default=str(ROOT / "bench" / "runs" / "online_vs_offline.png"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    if args.merge:
        arms, before, heading = merged_arms([Path(d) for d in args.merge])
        if args.baseline and args.baseline not in arms:
            parser.error(f"--baseline {args.baseline}: no such arm in the runs merged (they hold {', '.join(arms)})")
        # the software the arms ran on, as each kept it, not this process's
        software = "; ".join(sorted({arm.get("software") or "not recorded" for arm in arms.values()}))
        report(arms, before, heading, "python -m bench.online_vs_offline " + " ".join(argv), args, software)
        return 0
    if not args.model:
        parser.error("--model is required (unless --merge)")
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_.]+", args.tag):
        parser.error(f"--tag {args.tag!r}: letters, digits, '_' and '.' only (it names files)")
    known = known_before(parser, args)

    if args.rm_gpus is None:
        args.rm_gpus = 0.0 if compose_config([f"cluster={args.cluster}"]).cluster.device == "cpu" else 1.0
    run = Path(args.run_dir).resolve()
    if run.exists():
        raise SystemExit(f"bench/online_vs_offline.py: error: --run-dir {run} exists; remove it or pick another")
    run.mkdir(parents=True)
    n, prompts = args.group, args.samples // args.group
    gsm8k = [sys.executable, "-m", "bench.gsm8k", "--engine", args.engine, "--limit", str(args.limit),
             "--results", str(Path(args.results).resolve())] + (["--enforce-eager"] if args.engine == "vllm" else [])

    if known is not None:
        before = known[0]
    else:
        before = gsm8k_accuracy(run_phase("before", gsm8k + ["--model", args.model, "--label", "before"],
                                          run / "before.log"))[0]
    heading = (f"{machine('cuda' if args.engine == 'vllm' else 'cpu')}, model {Path(args.model).name}, "
               f"{prompts} GSM8K train prompts x {n} samples, {args.samples} samples per arm")
    # An arm that fails is one line, and the others go on: on a lent GPU, (d)'s failure must not cost (b) and (c).
    failed: dict[str, str] = {}
    if set(args.arms) & {"a", "d"}:
        try:
            if args.pairs:
                print(f"[online_vs_offline] pairs: {copy_pairs(Path(args.pairs), run / 'pairs.jsonl', prompts)} "
                      f"from {args.pairs}", flush=True)
            else:
                run_phase("pairs", phase_commands(args, run, extra)["pairs"], run / "pairs.log")
        except SystemExit as err:
            failed |= {arm_name(key, args.tag): f"the pairs it needs were not written ({err})"
                       for key in args.arms if key in "ad"}
    arms: dict[str, dict] = {}
    for key in args.arms:
        name = arm_name(key, args.tag)
        if name in failed:
            continue
        try:
            arms[name] = run_arm(key, args, run, extra, gsm8k)
        except SystemExit as err:
            failed[name] = str(err)
            print(f"[online_vs_offline] {label(name)} failed: {err}; the other arms go on", flush=True)
            continue
        # each arm as it ends: a lost machine keeps the finished ones, and --merge joins runs of several leases
        (run / f"arm_{name}.json").write_text(json.dumps({**arms[name], "before": before, "heading": heading,
                                                          "software": versions()}))
    if arms:
        report(arms, before, heading, "python -m bench.online_vs_offline " + " ".join(argv), args)
    for name, why in failed.items():
        print(f"bench/online_vs_offline.py: error: arm {label(name)} failed: {why}", file=sys.stderr)
    return 1 if failed else 0


def run_arm(key: str, args: argparse.Namespace, run: Path, extra: list[str], gsm8k: list[str]) -> dict:
    """One arm: its training run(s), then GSM8K on its exported policy; its summary (what arm_<key>.json keeps)."""
    t0, out = time.perf_counter(), run / key
    n, prompts = args.group, args.samples // args.group
    name = arm_name(key, args.tag)
    arm: dict = {"curve": [], "pair_accuracy": None, "held_out_pairs": None}
    if key == "d":
        subset(run / "pairs.jsonl", run / "pairs_rm.jsonl", int(args.rm_share * prompts))
        run_phase("d_rm", phase_commands(args, run, extra)["d_rm"], run / "d_rm.log")
        rm_rows = read_rows(run / "d_rm")
        arm |= held_out(rm_rows)
    run_phase(key, phase_commands(args, run, extra)[key], run / f"{key}.log")
    rows = read_rows(out)
    offset = int(args.rm_share * prompts) * n if key == "d" else 0
    if key == "a":
        arm |= held_out(rows)
        arm["samples"], arm["train_minutes"] = prompts * n, last_value(rows, "time/wall") / 60
    else:
        done = summarize(rows, n)
        arm["samples"], arm["train_minutes"] = offset + done["samples"], done["train_minutes"]
        arm["curve"] = online_curve(rows, n, offset)
    if key == "d":
        arm["train_minutes"] += last_value(rm_rows, "time/wall") / 60
    outcomes = run / f"{key}_after_outcomes.json"
    arm["after"] = gsm8k_accuracy(run_phase(f"{key}_after", gsm8k + ["--model", str(out / "hf_model"), "--label",
                                                                  f"after {label(name)}", "--outcomes",
                                                                  str(outcomes)],
                                            run / f"{key}_after.log"))[0]
    arm["outcomes"] = json.loads(outcomes.read_text())["correct"]
    arm["job_minutes"] = (time.perf_counter() - t0) / 60
    return arm


def merged_arms(run_dirs: list[Path]) -> tuple[dict[str, dict], float, str]:
    """The arms finished in `run_dirs` (their `arm_<key>.json`), in arm order; one "before" for all, or an error."""
    found = {}
    for run in run_dirs:
        for path in sorted(run.glob("arm_*.json")):
            found[path.stem.removeprefix("arm_")] = json.loads(path.read_text())
    if not found:
        folders = ", ".join(map(str, run_dirs))
        raise SystemExit(f"bench/online_vs_offline.py: error: --merge: no arm_*.json in {folders}")
    befores = {arm["before"] for arm in found.values()}
    if len(befores) > 1:
        raise SystemExit(f"bench/online_vs_offline.py: error: --merge: the runs started from different GSM8K "
                         f"'before' values {sorted(befores)}; merge runs of one model and protocol")
    arms = {name: found[name] for name in sorted(found, key=lambda name: (list(ARMS).index(name[0]), name))}
    return arms, befores.pop(), next(iter(arms.values()))["heading"]


def against_offline(arms: dict[str, dict], baseline: str) -> dict[str, PairedDifference]:
    """Each other arm's GSM8K outcomes against the offline arm `baseline`'s, paired by problem, where both arms
    kept them (arms run before the outcomes were recorded have none); other variants of (a) are compared too."""
    offline = arms.get(baseline, {}).get("outcomes")
    if not offline:
        return {}
    return {key: paired_difference(arm["outcomes"], offline) for key, arm in arms.items()
            if key != baseline and arm.get("outcomes") and len(arm["outcomes"]) == len(offline)}


def best_offline(arms: dict[str, dict]) -> str:
    """The offline arm ((a) or a tagged variant) with the best GSM8K after, "" if none ran: the default
    reference, so that a variant which did worse (say, one more pass) never makes online look better than it is."""
    offline = [key for key in arms if key[0] == "a"]
    return max(offline, key=lambda key: arms[key]["after"]) if offline else ""


def report(arms: dict[str, dict], before: float, heading: str, command: str, args: argparse.Namespace,
           software: str = "") -> None:
    """The table, the verdict (when offline DPO ran beside an online arm) and the plot, into `--results`
    (`software`: the versions the arms ran on, when not this process's)."""
    table = markdown_table(
        ["arm", "GSM8K pass@1 before -> after", "train min", "job min", "samples", "held-out pair accuracy"],
        [[label(k), f"{before:.4f} -> {a['after']:.4f}", f"{a['train_minutes']:.1f}",
          f"{a['job_minutes']:.1f}", str(a["samples"]), pair_accuracy_cell(a)] for k, a in arms.items()])
    verdict, base = "", args.baseline or best_offline(arms)
    online = [k for k in arms if k[0] != "a"]
    if base in arms and online:
        best = max(online, key=lambda k: arms[k]["after"])
        gap = arms[best]["after"] - arms[base]["after"]
        outcome = "beat" if gap > 0 else "tied with" if gap == 0 else "did not beat"
        verdict = (f"Online {outcome} offline here: the best online arm, {label(best)}, ended at "
                   f"{arms[best]['after']:.4f} against {label(base)}'s {arms[base]['after']:.4f} ({gap:+.4f}).")
        paired = against_offline(arms, base)
        if paired:
            verdict += (f"\n\nProblem by problem against {label(base)} on the same test problems (bench/paired.py; "
                        "a 95% interval that holds 0 means no difference this study can tell from noise):\n"
                        + "\n".join(f"- {label(k)} - ({base}): {d.describe()}" for k, d in paired.items()))
    plot(arms, before, Path(args.plot))
    print(table + "\n" + verdict, flush=True)
    append_section(Path(args.results), "Online vs offline (`bench/online_vs_offline.py`)", heading, command, table,
                   f"{verdict}\n\nPlot: {args.plot}", software)


if __name__ == "__main__":
    raise SystemExit(main())
