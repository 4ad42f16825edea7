"""bench/online_vs_offline.py on CPU, the two-stage arm (d): pairs sampled and labelled by a dense stand-in
verifier, an RM trained on half of them, GRPO against that RM on the other half of the budget, GSM8K before and
after (tiny model, HF engine, 4 problems), the table and the plot. Arms (a)-(c) run the paths tests/test_offline.py
and tests/test_learning.py cover. `--merge` joins the arms of runs made apart (one lease each) into one table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_reward_model import build_tiny_rm

from bench.online_vs_offline import build_parser, main, phase_commands
from rlpost.train import compose_config
from rlpost.validate import validate

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_stage_arm_on_cpu(tiny_model_dir: str, tmp_path: Path) -> None:
    results, plot, run = tmp_path / "RESULTS.md", tmp_path / "plot.png", tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.online_vs_offline", "--model", tiny_model_dir, "--engine", "hf",
           "--cluster", "debug_cpu", "--samples", "16", "--group", "4", "--prompts-per-step", "2", "--limit", "2",
           "--arms", "d", "--dpo-experiment", "gsm8k_grpo_debug", "--grpo-experiment", "gsm8k_grpo_debug",
           "--verifier", "tests/rewards_for_tests.py", "--verifier-name", "text_length", "--run-dir", str(run),
           "--results", str(results), "--plot", str(plot), "--skip-before", "--before", "0.25 1 4", "--",
           "rollout.max_new_tokens=8", "learner.num_ranks=1", "rollout.num_engines=1", "reward.num_workers=1",
           "eval.limit=2", "eval.num_samples=0", "logger.wandb.mode=disabled"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (run / "d_rm" / "hf_model" / "config.json").is_file() and (run / "d" / "hf_model").is_dir()
    row = next(line for line in results.read_text().splitlines() if line.startswith("| (d) RM + GRPO"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "16"  # 2 prompts x 4 samples for the RM's pairs + 1 GRPO step of 2 x 4
    assert cells[1].startswith("0.2500 -> ")  # --before, not measured again
    assert not (run / "before.log").exists()
    assert json.loads((run / "arm_d.json").read_text())["samples"] == 16  # kept for --merge
    assert plot.is_file()


def write_arm(run: Path, key: str, before: float, after: float, curve: list, outcomes: list | None = None,
              held_out_pairs: int | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    arm = {"curve": curve, "pair_accuracy": 0.7 if key[0] in "ad" else None, "samples": 16384, "train_minutes": 5.0,
           "job_minutes": 8.0, "after": after, "before": before, "heading": "H200, model qwen"}
    if held_out_pairs is not None:  # arms of the first lease kept no count
        arm["held_out_pairs"] = held_out_pairs
    if outcomes is not None:  # arms from before the outcomes were recorded have none
        arm["outcomes"] = outcomes
    (run / f"arm_{key}.json").write_text(json.dumps(arm))


def test_merge_joins_arms_of_separate_runs(tmp_path: Path) -> None:
    write_arm(tmp_path / "ad", "a", 0.2578, 0.29, [], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    write_arm(tmp_path / "ad", "d", 0.2578, 0.31, [[8192, 0.3], [16384, 0.32]])  # no outcomes: no paired line
    write_arm(tmp_path / "bc", "c", 0.2578, 0.35, [[4096, 0.3], [16384, 0.36]], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    results, plot = tmp_path / "RESULTS.md", tmp_path / "plot.png"
    assert main(["--merge", str(tmp_path / "bc"), str(tmp_path / "ad"), "--results", str(results),
                 "--plot", str(plot)]) == 0
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert [r.split("|")[1].strip() for r in rows] == ["(a) offline DPO", "(c) GRPO", "(d) RM + GRPO"]  # arm order
    assert "0.2578 -> 0.3500" in rows[1]
    assert "Online beat offline here: the best online arm, (c) GRPO, ended at 0.3500 against (a) offline DPO's " \
           "0.2900 (+0.0600)." in text
    # c solves 3 problems a does not, a none that c does not: d = 0.3 +- 1.96 * 0.48305 / sqrt(10) = 0.2994;
    # McNemar 2 * P(Bin(3, 1/2) = 0) = 0.25
    assert "- (c) GRPO - (a): +0.3000 (95% CI +0.0006 to +0.5994; 3 vs 0 problems solved by only one, McNemar " \
           "p = 0.25)" in text
    assert "- (d)" not in text
    assert "Software: not recorded." in text  # the arms kept none, and this process's versions are not theirs
    assert plot.is_file()


def test_a_tagged_variant_sits_beside_its_arm_and_is_no_online_arm(tmp_path: Path, capsys) -> None:
    """`--tag 1ep` arms (a variant of the protocol, another lease) are rows of their own after the arm they vary,
    compared with (a) problem by problem, and never taken for the best online arm."""
    write_arm(tmp_path / "l1", "a", 0.2578, 0.21, [], [1, 0, 0, 0], held_out_pairs=113)
    write_arm(tmp_path / "l1", "b", 0.2578, 0.31, [], [1, 1, 0, 0])
    write_arm(tmp_path / "l2", "a-1ep", 0.2578, 0.33, [], [1, 1, 1, 0], held_out_pairs=113)
    results = tmp_path / "RESULTS.md"
    assert main(["--merge", str(tmp_path / "l2"), str(tmp_path / "l1"), "--baseline", "a", "--results",
                 str(results), "--plot", str(tmp_path / "p.png")]) == 0
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert [r.split("|")[1].strip() for r in rows] == ["(a) offline DPO", "(a-1ep) offline DPO", "(b) online DPO"]
    # 0.7 of 113 is 79: Wilson's 95% interval 0.609-0.776
    assert rows[0].split("|")[6].strip() == "0.700 of 113 (0.61-0.78)" and rows[2].split("|")[6].strip() == ""
    assert "the best online arm, (b) online DPO, ended at 0.3100 against (a) offline DPO's 0.2100 (+0.1000)" in text
    assert "- (a-1ep) offline DPO - (a): +0.5000" in text and "- (b) online DPO - (a): +0.2500" in text
    # by default the reference is the best offline run, here the variant (0.33 against (a)'s 0.21)
    assert main(["--merge", str(tmp_path / "l2"), str(tmp_path / "l1"), "--results",
                 str(results), "--plot", str(tmp_path / "p.png")]) == 0
    text = results.read_text().split("### ")[-1]
    assert "Online did not beat offline here: the best online arm, (b) online DPO, ended at 0.3100 against " \
           "(a-1ep) offline DPO's 0.3300 (-0.0200)." in text
    assert "- (a) offline DPO - (a-1ep): -0.5000" in text
    with pytest.raises(SystemExit):
        main(["--merge", str(tmp_path / "l1"), "--baseline", "a-1ep", "--results", str(results)])
    assert "--baseline a-1ep: no such arm in the runs merged (they hold a, b)" in capsys.readouterr().err


def test_tag_names_files_so_it_is_checked_first(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(tmp_path), "--tag", "1 ep/x", "--run-dir", str(tmp_path / "r")])
    assert stop.value.code == 2 and "--tag '1 ep/x': letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_merge_refuses_runs_from_different_starts(tmp_path: Path) -> None:
    write_arm(tmp_path / "x", "a", 0.2578, 0.29, [])
    write_arm(tmp_path / "y", "b", 0.30, 0.35, [])
    with pytest.raises(SystemExit, match="different GSM8K 'before' values"):
        main(["--merge", str(tmp_path / "x"), str(tmp_path / "y"), "--results", str(tmp_path / "R.md"),
              "--plot", str(tmp_path / "p.png")])


def test_skip_before_needs_the_three_numbers(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(tmp_path), "--skip-before", "--before", "0.2578", "--run-dir", str(tmp_path / "r")])
    assert stop.value.code == 2 and "--skip-before needs --before 'PASS1 CORRECT N'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_every_phase_of_the_gpu_study_composes_and_validates(tiny_model_dir: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands `bash bench/gpu_lease.sh study` runs (the Qwen recipes, cluster=single_gpu, the default budget)
    pass the start-up checks every rlpost command makes before Ray starts: a bad override or size there would cost
    a GPU lease. (The CPU smoke test above runs the debug recipe, not these.) This machine has neither a GPU nor
    vLLM, the two checks that look at the machine: a cluster address stands for the GPU machine (the checks then
    leave the GPUs to the cluster), and vLLM's install check is skipped."""
    import rlpost.rollout.vllm_engine

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setattr(rlpost.rollout.vllm_engine, "check_vllm", lambda: None)
    args = build_parser().parse_args(["--model", tiny_model_dir, "--skip-before", "--before", "0.2578 340 1319"])
    args.rm_gpus = 1.0
    run = tmp_path / "run"
    run.mkdir()
    # the pair files the earlier phases write: 1,500 pairs of 2,048 prompts, 700 of them among the RM's first half
    (run / "pairs.jsonl").write_text("{}\n" * 1500)
    (run / "pairs_rm.jsonl").write_text("{}\n" * 700)
    build_tiny_rm(run / "d_rm" / "hf_model", tiny_model_dir)  # what the RM phase exports, checked by (d)'s start-up
    commands = phase_commands(args, run, [])
    assert set(commands) == {"pairs", "a", "b", "c", "d_rm", "d"}
    steps = {}
    for key, cmd in commands.items():
        module, overrides = cmd[2], cmd[3:]
        cfg = compose_config(overrides, "rm" if module == "rlpost.train_rm" else "config")
        assert cfg.cluster.colocate and cfg.model.path == str(Path(tiny_model_dir).resolve()), key
        validate(cfg)
        steps[key] = cfg.trainer.steps
        assert cfg.data.limit == 2048 and cfg.trainer.prompts_per_step == 64 and cfg.trainer.max_minutes == 10
        assert cfg.rollout.kv_cache_gb == 6  # every arm's engines alike, whatever its recipe's own setting
        assert not cfg.trainer.final_checkpoint and (cfg.trainer.export_hf or module == "rlpost.pairs")
    # 16,384 samples = 32 steps of 64 x 8; (d) half of that after the RM's 1,024 prompts x 8; 2 passes over pairs
    assert (steps["b"], steps["c"], steps["d"]) == (32, 32, 16)
    assert (steps["a"], steps["d_rm"]) == (math.ceil(2 * 1500 / 64), math.ceil(2 * 700 / 64))
    # the variant planned for the second lease: one pass for (a), eight for the RM
    args.offline_epochs, args.rm_epochs = 1.0, 8.0
    variant = phase_commands(args, run, [])
    assert f"trainer.steps={math.ceil(1500 / 64)}" in variant["a"]
    assert f"trainer.steps={math.ceil(8 * 700 / 64)}" in variant["d_rm"]


def test_a_failed_arm_is_one_line_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys) -> None:
    """The study's control flow alone (the arms' runs are the slow test's): the pairs fail, so (a) and (d) cannot
    run; (b) fails on its own; (c) still runs, is kept and reported; the exit code says something failed."""
    import bench.online_vs_offline as study

    def run_phase(name: str, cmd: list[str], log: Path) -> str:
        assert name == "pairs"
        raise SystemExit("bench/learn_gsm8k.py: error: the pairs phase failed (exit 1); see pairs.log")

    ran = []

    def run_arm(key: str, *args) -> dict:
        ran.append(key)
        if key == "b":
            raise SystemExit("bench/learn_gsm8k.py: error: the b phase failed (exit 1); see b.log")
        return {"curve": [], "pair_accuracy": None, "samples": 16384, "train_minutes": 4.0, "job_minutes": 7.0,
                "after": 0.33, "outcomes": [1, 0]}

    monkeypatch.setattr(study, "run_phase", run_phase)
    monkeypatch.setattr(study, "run_arm", run_arm)
    results, run = tmp_path / "RESULTS.md", tmp_path / "run"
    code = main(["--model", str(tmp_path), "--engine", "hf", "--cluster", "debug_cpu", "--arms", "adbc",
                 "--skip-before", "--before", "0.2578 340 1319", "--run-dir", str(run), "--results", str(results),
                 "--plot", str(tmp_path / "p.png")])
    assert code == 1 and ran == ["b", "c"]
    assert [p.name for p in run.glob("arm_*.json")] == ["arm_c.json"]
    assert "| (c) GRPO | 0.2578 -> 0.3300 |" in results.read_text()
    err = capsys.readouterr().err.splitlines()
    assert err == ["bench/online_vs_offline.py: error: arm (a) offline DPO failed: the pairs it needs were not written "
                   "(bench/learn_gsm8k.py: error: the pairs phase failed (exit 1); see pairs.log)",
                   "bench/online_vs_offline.py: error: arm (d) RM + GRPO failed: the pairs it needs were not written "
                   "(bench/learn_gsm8k.py: error: the pairs phase failed (exit 1); see pairs.log)",
                   "bench/online_vs_offline.py: error: arm (b) online DPO failed: bench/learn_gsm8k.py: error: the b "
                   "phase failed (exit 1); see b.log"]


def test_pairs_of_an_earlier_run_are_reused_or_refused_in_one_line(tmp_path: Path) -> None:
    import gzip

    from bench.online_vs_offline import copy_pairs

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "prompt_index": i} for i in (0, 3, 1)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "pairs.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    assert copy_pairs(tmp_path / "pairs.jsonl.gz", tmp_path / "out.jsonl", prompts=4) == 3
    assert (tmp_path / "out.jsonl").read_text() == text
    with pytest.raises(SystemExit, match=r"row 2 has prompt_index 3, not one of this run's 3 prompts"):
        copy_pairs(tmp_path / "pairs.jsonl.gz", tmp_path / "out.jsonl", prompts=3)
    with pytest.raises(SystemExit, match="--pairs .*missing.jsonl: no such file"):
        copy_pairs(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", prompts=3)
