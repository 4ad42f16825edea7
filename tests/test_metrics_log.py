"""The step log: metrics.jsonl rows (NaN as null) and one printed line per step; a live bar only on a terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlpost.metrics import MetricsLogger, timed


def test_plain_lines_and_jsonl_rows(tmp_path: Path, capsys) -> None:
    log = MetricsLogger(str(tmp_path), total_steps=20, wandb_mode="disabled", wandb_project="p", config={},
                        progress=False)
    log.log(0, {"eval/pass@1": 0.25}, advance=False)
    log.log(3, {"reward/mean": 0.5, "accuracy": 0.5, "actor/kl": 0.00187, "rollout/logprob_diff": 0.0425,
                "perf/step_seconds": 8.04, "time/generate": 4.39, "time/train": 2.16, "time/sync": 0.16,
                "sync/seconds": math.nan})
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[rlpost] step 0/20 eval=0.25",
        "[rlpost] step 3/20 reward=0.500 acc=0.50 kl=0.0019 lp_diff=0.043 s/step=8.0 | gen=4.39s train=2.16s "
        "sync=0.16s",
    ]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 0, "eval/pass@1": 0.25}
    assert rows[1]["step"] == 3 and rows[1]["sync/seconds"] is None and rows[1]["time/sync"] == 0.16


def test_redirected_output_gets_lines_not_a_bar(tmp_path: Path, capsys) -> None:
    """`logger.progress=true` (the default) with stdout/stderr not a terminal: no bar redraws, a line per step."""
    log = MetricsLogger(str(tmp_path), total_steps=2, wandb_mode="disabled", wandb_project="p", config={},
                        progress=True)
    log.log(1, {"reward/mean": 0.5})
    log.close()
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[rlpost] step 1/2 reward=0.500"] and "\r" not in err


def test_timed_adds_each_piece_of_a_phase(monkeypatch) -> None:
    clock = iter([10.0, 10.5, 20.0, 21.25, 30.0, 30.5])
    monkeypatch.setattr("rlpost.metrics.time.perf_counter", lambda: next(clock))
    timings = {"time/sync": 0.0}
    with timed(timings, "time/sync"):
        pass
    with timed(timings, "time/train"):
        pass
    try:
        with timed(timings, "time/sync"):  # a phase that raises still counts the time it took
            raise RuntimeError
    except RuntimeError:
        pass
    assert timings == {"time/sync": 1.0, "time/train": 1.25}
