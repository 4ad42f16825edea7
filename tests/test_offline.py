"""Offline preference training end to end on the tiny model, on a real local Ray cluster with DeepSpeed on the CPU:
reward-model training (`rlpost-train-rm`'s config through `rlpost.train.run`), offline DPO, and pairs sampled by
`python -m rlpost.pairs` feeding both.

The synthetic task: each pair's two completions are the same three words followed by " good" (chosen) or " bad"
(rejected), with one more word on one side or the other (`marker_pairs`). One token decides, so the random tiny model
learns it in a few steps (plain PyTorch needs ~10 steps of 8 pairs at LR 1e-3 to rank every held-out pair right)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlpost.config import RewardModelConfig, RunError
from rlpost.pairs import generate_pairs
from rlpost.rewards.reward_model import RewardModelScorer, check_reward_model
from rlpost.train import compose_config, run

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
WORDS = ["apple", "river", "stone", "cloud", "music", "paper", "garden", "window", "silver", "yellow", "engine",
         "forest", "candle", "bridge", "planet"]


def marker_pairs(n: int, seed: int) -> list[dict]:
    """One extra word on the chosen side in half the rows and on the rejected side in the other half: length says
    nothing about which side wins, so a trainer that lost the pairing (sorting sequences one by one by length)
    cannot pass as one that learnt the marker."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        body, extra = " ".join(rng.sample(WORDS, 3)), rng.choice(WORDS)
        chosen, rejected = (f"{body} {extra} good", f"{body} bad") if i % 2 else (f"{body} good", f"{body} {extra} bad")
        rows.append({"prompt": f"Describe the {rng.choice(WORDS)}.", "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def offline_cfg(config_name: str, model_dir: str, pairs: str, run_dir: Path, *overrides: str):
    return compose_config([
        f"model.path={model_dir}", f"pairs.path={pairs}", f"trainer.run_dir={run_dir}", "learner.num_ranks=1",
        "trainer.prompts_per_step=8", "learner.micro_batch_size=16", "learner.lr=1e-3", "logger.progress=false",
        "logger.wandb.mode=disabled", *overrides], config_name=config_name)


def test_reward_model_learns_and_exports(local_ray, tiny_model_dir: str, tmp_path: Path) -> None:
    """The pair loss goes down, held-out pair accuracy goes up, and the exported folder passes `reward.models`'
    start-up check and, served by its scorer, ranks chosen above rejected on > 80% of fresh pairs."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(120, seed=0))
    cfg = offline_cfg("rm", tiny_model_dir, pairs, tmp_path / "run", "trainer.steps=12", "eval.every=6")
    t0 = time.perf_counter()
    history = run(cfg)
    losses = [m["rm/loss"] for m in history]
    print(f"\n[offline] RM: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out accuracy "
          f"{history[-1]['eval/pair_accuracy']:.2f} in {time.perf_counter() - t0:.0f}s")
    assert losses[-1] < 0.5 * losses[0], losses
    assert history[-1]["eval/pair_accuracy"] > 0.8, history[-1]

    exported = tmp_path / "run" / "hf_model"
    check_reward_model(RewardModelConfig(path=str(exported)), 0, "cpu")
    scorer = RewardModelScorer(str(exported))
    fresh = marker_pairs(50, seed=1)
    messages = [[{"role": "user", "content": r["prompt"]}] for r in fresh]
    chosen = scorer.score(messages, [r["chosen"] for r in fresh])
    rejected = scorer.score(messages, [r["rejected"] for r in fresh])
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(fresh)
    assert accuracy > 0.8, accuracy
    assert (tmp_path / "run" / "checkpoints" / "step_000012" / "reward_model").is_dir()
    assert (tmp_path / "run" / "report.md").is_file()


def test_offline_dpo_raises_the_margin(local_ray, tiny_model_dir: str, tmp_path: Path) -> None:
    """Offline DPO (two ranks, so the pairs are dealt across DeepSpeed ranks): the held-out implicit-reward
    margin starts at 0 (policy = reference) and rises, and so does the pair accuracy."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(120, seed=0))
    cfg = offline_cfg("config", tiny_model_dir, pairs, tmp_path / "run", "algo=dpo_offline", "trainer.steps=6",
                      "learner.num_ranks=2", "learner.micro_batch_size=8", "trainer.export_hf=false")
    history = run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    before, after = rows[0], rows[-1]
    print(f"\n[offline] DPO: held-out margin {before['eval/margin']:.3f} -> {after['eval/margin']:.3f}, accuracy "
          f"{before['eval/pair_accuracy']:.2f} -> {after['eval/pair_accuracy']:.2f}")
    assert before["step"] == 0 and abs(before["eval/margin"]) < 1e-4
    assert before["eval/pair_accuracy"] == 0.5  # policy = reference: every margin ties, a coin flip each
    assert before["eval/pairs"] == after["eval/pairs"] == 12  # the last tenth of 120 (pairs.eval_fraction)
    assert after["eval/margin"] > 0.1 and after["eval/pair_accuracy"] > 0.8, after
    assert history[-1]["dpo/margin"] > history[0]["dpo/margin"]
    # each side's log-ratio to the reference, the margin's two halves: margin = beta * (chosen - rejected)
    beta = cfg.algo.dpo_beta
    for row, prefix in ((after, "eval/"), (history[-1], "dpo/")):
        halves = beta * (row[f"{prefix}chosen_logratio"] - row[f"{prefix}rejected_logratio"])
        assert halves == pytest.approx(row[f"{prefix}margin"], rel=1e-3, abs=1e-5), row
    assert before["eval/chosen_logratio"] == before["eval/rejected_logratio"] == pytest.approx(0.0, abs=1e-4)


def test_offline_resume_is_exact_and_a_collapse_stops_before_its_checkpoint(local_ray, tiny_model_dir: str,
                                                                             tmp_path: Path) -> None:
    """Offline DPO for 4 steps (checkpoints at 2 and 4; 18 training pairs, 8 a step, so step 3 starts a new epoch),
    then a second run resumed with `trainer.resume=auto` from a copy of step 2's checkpoint (a damaged step-3
    folder beside it is skipped): steps 3 and 4 see the same pairs and give the same metrics as the uninterrupted
    run. Then `trainer.min_entropy` above any entropy stops the next step with one line, and the collapsed step is
    not checkpointed."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(24, seed=0))
    common = ("algo=dpo_offline", "pairs.eval_fraction=0.25", "trainer.save_every=2", "eval.every=2",
              "trainer.export_hf=false")
    full = run(offline_cfg("config", tiny_model_dir, pairs, tmp_path / "a", "trainer.steps=4", *common))
    resumed_dir = tmp_path / "b" / "checkpoints"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step_000002", resumed_dir / "step_000002")
    shutil.copytree(resumed_dir / "step_000002", resumed_dir / "step_000003")
    (resumed_dir / "step_000003" / "driver.pt").write_bytes(b"")  # truncated: auto must skip this one
    resumed = run(offline_cfg("config", tiny_model_dir, pairs, tmp_path / "b", "trainer.steps=4",
                              "trainer.resume=auto", *common))

    def comparable(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if not k.startswith(("time/", "perf/", "learner/seconds"))}
                for row in rows]  # wall-clock numbers differ run to run

    assert len(full) == len(resumed) == 4 and full[2]["data/epoch"] == 1.0
    assert comparable(resumed) == comparable(full)  # steps 1-2 from the checkpoint's record, 3-4 trained again
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]

    with pytest.raises(RunError) as err:
        run(offline_cfg("config", tiny_model_dir, pairs, tmp_path / "b", "trainer.steps=5", "trainer.resume=auto",
                        "trainer.min_entropy=1000", *common))
    message = str(err.value)
    assert message.startswith("step 5: actor/entropy=") and "is below trainer.min_entropy=1000: " in message
    assert f"the last checkpoint is {resumed_dir / 'step_000004'} " in message and "\n" not in message
    assert sorted(p.name for p in resumed_dir.iterdir()) == ["step_000002", "step_000003", "step_000004"]


def test_generated_pairs_round_trip(local_ray, tiny_model_dir: str, tmp_path: Path) -> None:
    """`python -m rlpost.pairs`' output (a dense reward on the HF engine's samples, so ties are rare) trains a
    reward model and an offline DPO policy as it is."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"question": f"Describe the {w}."} for w in WORDS[:8]])
    out = tmp_path / "generated.jsonl"
    counts = generate_pairs(compose_config([
        f"model.path={tiny_model_dir}", f"data.train_path={prompts}", f"pairs.path={out}",
        "pairs.samples_per_prompt=4", "trainer.prompts_per_step=4", "rollout.max_new_tokens=12",
        "rollout.num_engines=1", "reward.num_workers=1", "reward.accuracy=rewards_for_tests",
        f"reward.functions=[{{path: {TESTS / 'rewards_for_tests.py'}, name: text_length}}]"]))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["pairs"] == len(rows) >= 6 and counts["prompts"] == 8
    # The prompt is the user turn as it was sampled: the question, then data.instruction.
    assert all(r["chosen_score"] > r["rejected_score"]
               and r["prompt"].startswith(f"Describe the {WORDS[r['prompt_index']]}.\n\nSolve") for r in rows)
    # the random model rarely ends a turn within 12 tokens: the rows say which completions the limit cut
    flags = [r[k] for r in rows for k in ("chosen_truncated", "rejected_truncated")]
    assert all(isinstance(f, bool) for f in flags) and any(flags)
    assert counts["truncated"] == sum(r["chosen_truncated"] or r["rejected_truncated"] for r in rows)

    common = ("trainer.steps=2", "trainer.prompts_per_step=2", "learner.micro_batch_size=4", "pairs.eval_fraction=0.3")
    rm = run(offline_cfg("rm", tiny_model_dir, str(out), tmp_path / "rm", *common))
    check_reward_model(RewardModelConfig(path=str(tmp_path / "rm" / "hf_model")), 0, "cpu")
    dpo = run(offline_cfg("config", tiny_model_dir, str(out), tmp_path / "dpo", "algo=dpo_offline", *common,
                          "trainer.final_checkpoint=false"))  # as bench/online_vs_offline.py runs it
    assert len(rm) == len(dpo) == 2 and "rm/loss" in rm[-1] and "dpo/loss" in dpo[-1]
    assert (tmp_path / "dpo" / "hf_model" / "config.json").is_file()
    assert (tmp_path / "rm" / "checkpoints" / "step_000002").is_dir()
    assert not (tmp_path / "dpo" / "checkpoints").exists()



def test_cli_bad_pair_row_is_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    """`rlpost-train-rm` (as `python -m rlpost.train_rm`) with `pairs.on_bad_row=stop`: the first bad row is one
    stderr line naming it, exit code 2, before any actor, and no run folder is left behind; `python -m
    rlpost.pairs` without an output file likewise."""
    rows = marker_pairs(3, seed=0)
    rows[1] = {"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run_dir = tmp_path / "run"
    commands = {"row 2: 'chosen' and 'rejected' are the same text": [
                    "rlpost.train_rm", f"model.path={tiny_model_dir}", f"pairs.path={pairs}", "pairs.on_bad_row=stop",
                    f"trainer.run_dir={run_dir}"],
                "pairs.path is empty": ["rlpost.pairs", f"model.path={tiny_model_dir}"]}
    for message, args in commands.items():
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                              cwd=TESTS.parent)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("rlpost: error: pairs.path") and message in last, proc.stderr
    assert not run_dir.exists()
