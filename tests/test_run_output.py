"""What a run leaves behind besides its metrics: the driver's log in `<run_dir>/train.log` (plain text), no empty
run folder after a failed start, no DeepSpeed build announcement from every learner."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.learner.actor import lines_dropped
from rlpost.train import Tee, remove_if_unused

ROOT = Path(__file__).resolve().parent.parent


def test_tee_logs_plain_text_and_keeps_the_console_as_is() -> None:
    console, log = io.StringIO(), io.StringIO()
    tee = Tee(console, log)
    tee.write("\x1b[36m(LearnerRank pid=7)\x1b[0m ready\n")
    tee.write("\rrlpost:  50%|#####     | 1/2")  # a progress-bar redraw
    tee.write("[rlpost] step 1/2 reward=0.500\n")
    assert log.getvalue() == "(LearnerRank pid=7) ready\n[rlpost] step 1/2 reward=0.500\n"
    assert console.getvalue().startswith("\x1b[36m(LearnerRank pid=7)") and "\r" in console.getvalue()
    assert tee.isatty() is False  # everything else is the console's


def test_lines_dropped_keeps_the_others(capsys) -> None:
    with lines_dropped("built successfully"):
        print("DeepSpeed deepspeed_shm_comm_op built successfully")
        print("kept")
    assert capsys.readouterr().out == "kept\n"


def test_remove_if_unused(tmp_path: Path) -> None:
    failed, ran = tmp_path / "failed", tmp_path / "ran"
    for folder in (failed, ran):
        (folder / ".hydra").mkdir(parents=True)
        (folder / "train.log").write_text("rlpost: error: ...\n")
    (ran / "config.yaml").write_text("x: 1\n")
    remove_if_unused(str(failed))
    remove_if_unused(str(ran))
    assert not failed.exists() and (ran / "config.yaml").exists()


def cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlpost.train", "experiment=gsm8k_grpo_debug", *overrides],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_a_config_error_leaves_no_run_folder(tmp_path: Path) -> None:
    proc = cli("+data.path=/tmp/x.jsonl", f"trainer.run_dir={tmp_path}/run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("rlpost: error: data.path: not an option")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_log_holds_the_driver_output(tmp_path: Path, tiny_model_dir: str) -> None:
    """A start that fails once the run has begun (no Ray cluster at the given address): the folder stays, and
    train.log has what the console had, the driver's lines and the error."""
    run = tmp_path / "run"
    proc = cli(f"model.path={tiny_model_dir}", "data.limit=16", "cluster.address=127.0.0.1:9",
               f"trainer.run_dir={run}")
    assert proc.returncode == 2, proc.stderr
    log = (run / "train.log").read_text()
    assert f"[rlpost] run dir {run}" in log and "rlpost: error: cluster.address='127.0.0.1:9'" in log
    assert (run / "config.yaml").exists()
