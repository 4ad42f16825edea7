"""pass@k against hand-computed values, the evaluation schedule, and the report card from a metrics record."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlpost.eval import Evaluator, final_answer, majority_correct, pass_at_k
from rlpost.report import time_breakdown, write_report


def test_pass_at_k_hand_computed() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # one correct of four, one draw
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # only one wrong sample: every pair holds a correct one
    assert pass_at_k(7, 7, 7) == 1.0


def test_pass_at_k_matches_the_binomial_formula() -> None:
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_impossible_counts() -> None:
    for n, c, k in ((4, 5, 1), (4, 1, 5), (4, 1, 0), (3, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_evaluation_schedule() -> None:
    evaluator = Evaluator.__new__(Evaluator)  # only the schedule: no prompts needed
    evaluator.cfg = OmegaConf.create({"eval": {"every": 3}})
    assert [s for s in range(0, 8) if evaluator.due(s, last_step=7)] == [0, 3, 6, 7]
    evaluator.cfg.eval.every = 0
    assert [s for s in range(0, 8) if evaluator.due(s, last_step=7)] == [0, 7]


def _rows() -> list[dict]:
    rows = [{"step": 0, "eval/pass@1": 0.10, "eval/pass@4": 0.30, "time/eval": 2.0}]
    for step in range(1, 5):
        rows.append({"step": step, "reward/mean": 0.1 * step, "accuracy": 0.05 * step, "actor/kl": 0.001 * step,
                     "kl/sequence": 0.2 * step,
                     "response/length_mean": 100.0 + step, "response/length_max": 200.0,
                     "time/generate": 3.0, "time/reward": 1.0, "time/train": 5.0, "time/sync": 1.0,
                     "perf/step_seconds": 10.0, "actor/pg_loss": None, "actor/entropy": 1.0 / step,
                     "reward/format/hash": 0.1 * step,
                     "time/wall": 2.0 + 10.5 * step})
    rows[2].update({"eval/pass@1": 0.25, "eval/pass@4": 0.50, "time/eval": 2.0})
    rows[4].update({"eval/pass@1": 0.20, "eval/pass@4": 0.55, "eval/maj@4": 0.30, "time/eval": 2.0})
    return rows


def test_time_breakdown_shares() -> None:
    breakdown = {p: (total, mean, share) for p, total, mean, share in time_breakdown(_rows())}
    assert breakdown["time/train"] == pytest.approx((20.0, 5.0, 20.0 / 46.0))
    assert breakdown["time/eval"] == pytest.approx((6.0, 2.0, 6.0 / 46.0))
    assert "time/experience" not in breakdown  # phases that were not logged are left out


def test_report_card(tmp_path: Path) -> None:
    rows = _rows()
    for r, skipped in zip((r for r in rows if r["step"] > 0), (1, 0, 2), strict=False):
        r["actor/skipped_updates"] = skipped
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(str(tmp_path), "experiment: test\n", {"CPU": 8.0, "GPU": 2.0, "memory": 1e9})
    text = report.read_text()
    assert "Optimizer updates skipped for a non-finite loss or gradient norm: 3 (actor)." in text
    # final and best, with their steps
    assert "| eval/pass@1 | 0.2000 | 4 | 0.2500 | 2 |" in text
    assert "| eval/pass@4 | 0.5500 | 4 | 0.5500 | 4 |" in text
    assert "| eval/maj@4 | 0.3000 | 4 | 0.3000 | 4 |" in text
    assert "Training took 0.7 minutes of wall-clock time" in text  # time/wall at the last step: 44 s
    assert "| train | 20.0 | 5.00 | 43% |" in text
    assert "Training steps took 40.0 s in all, 10.0 s per step" in text
    assert "| Ray cluster | CPU=8, GPU=2 |" in text and "| torch |" in text
    assert "```yaml\nexperiment: test\n```" in text
    for stem in ("reward", "eval", "kl", "kl_sequence", "response_length", "format", "entropy", "step_time"):
        png = tmp_path / "plots" / f"{stem}.png"
        assert f"](plots/{stem}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_final_answer_keys() -> None:
    assert final_answer("so 9 * 2 = 18 dollars. #### 18") == "18"
    assert final_answer("#### $1,000.\nDone") == "1000"
    assert final_answer("The total is \\boxed{18.0} dollars") == "18"
    assert final_answer("3 + 4 = 7, then 7 * 2.5 = 17.5.") == "17.5"
    assert final_answer("I cannot solve this") is None
    assert final_answer("#### eighteen") == "eighteen"


def test_majority_vote_hand_computed() -> None:
    # 18 twice (correct), 20 once: the majority is right although one sample is wrong.
    assert majority_correct(["18", "20", "18"], [True, False, True]) is True
    # A tie between 20 and 18 goes to the first seen (20, wrong); samples without an answer do not vote.
    assert majority_correct(["20", None, "18", None], [False, False, True, False]) is False
    assert majority_correct([None, None], [False, False]) is False
    assert majority_correct([None, "18"], [False, True]) is True
