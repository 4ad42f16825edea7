"""`rlpost-train`: the Hydra entry point.

    rlpost-train experiment=gsm8k_grpo_debug algo.group_size=8 trainer.steps=20

Bad input ends the run with one line on stderr naming the field (exit code 2), before any actor starts (a reward
function's failing dry call: as soon as the reward actor is up).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import hydra
from omegaconf import DictConfig, OmegaConf

from rlpost import signals
from rlpost.config import ConfigError, RunError, register_configs

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
register_configs()


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The config `rlpost-train OVERRIDES...` runs with (`config_name="rm"`: `rlpost-train-rm`'s), built without
    running: for tests, benchmarks and notebooks."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def run(cfg: DictConfig) -> list[dict[str, float]]:
    """Validate, build the groups, resume if asked, train, and write the report card. Importable, so tests and
    notebooks drive the same path as the CLI. `algo.offline` runs train on a pair file (`rlpost.offline`)."""
    from rlpost.runlock import run_lock
    from rlpost.validate import validate

    validate(cfg)
    run_dir = os.path.abspath(cfg.trainer.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with run_lock(run_dir):  # before anything reads or writes the folder: one run per folder
        return _run(cfg, run_dir)


def _run(cfg: DictConfig, run_dir: str) -> list[dict[str, float]]:
    from rlpost.checkpoint import find_resume
    from rlpost.models import resolve_model_path
    from rlpost.offline import OfflineTrainer
    from rlpost.report import write_report
    from rlpost.trainer import Trainer

    model_path = resolve_model_path(cfg.model.path)
    if cfg.algo.offline:
        trainer = OfflineTrainer(cfg, model_path, run_dir)
        data = trainer.summary
    else:
        trainer = Trainer(cfg, model_path, run_dir)
        data = f"{len(trainer.loader.prompts)} prompts" + (
            f" ({trainer.dropped_prompts} longer than data.max_prompt_tokens dropped)"
            if trainer.dropped_prompts else "")
    resume = find_resume(cfg.trainer.resume, run_dir)
    if resume is not None:
        trainer.prepare_resume(resume)  # checks fit and integrity before any actor starts
    elif cfg.trainer.resume:
        print(f"[rlpost] trainer.resume={cfg.trainer.resume}: no checkpoint in {run_dir} yet, starting fresh",
              flush=True)
    print(f"[rlpost] run dir {run_dir}; model {model_path}; {data}", flush=True)
    OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)
    t0 = time.perf_counter()
    stopping = signals.installed()  # the CLI's handlers (a notebook's stay as they are)
    try:
        trainer.start()
        if stopping:
            signals.install()  # again: `ray.init` (in start) sets its own SIGTERM handler
        print(f"[rlpost] actors up in {time.perf_counter() - t0:.1f}s", flush=True)
        if resume is not None:
            trainer.restore()
        return trainer.fit()
    finally:
        trainer.close()
        if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):  # steps ran, whether or not the run finished
            try:  # a failure here must not hide the run's own error
                report = write_report(run_dir, OmegaConf.to_yaml(cfg, resolve=True), trainer.cluster_resources)
                print(f"[rlpost] report {report}", flush=True)
            except Exception as err:
                print(f"[rlpost] warning: report not written ({type(err).__name__}: {err})", file=sys.stderr,
                      flush=True)


def user_error(err: BaseException) -> str | None:
    """The one-line message of a ConfigError/RunError, also when Ray wraps it (an actor's method raised it:
    RayTaskError.cause; an actor's __init__ raised it: only the text survives, in ActorDiedError's message)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConfigError, RunError)):
            return str(seen).splitlines()[0] if str(seen) else type(seen).__name__
        seen = getattr(seen, "cause", None) or seen.__cause__
    found = re.findall(r"(?:ConfigError|RunError): (.+)", str(err))
    return found[-1].strip() if found else None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A known error (`user_error` finds one) ends the process with one stderr line and exit code 2 (bad config)
    or 1 (a failure after start-up); anything else propagates with its traceback."""
    try:
        yield
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"rlpost: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Tee:
    """A console stream that also appends what it writes to the run's log file: without colour codes, and without
    progress-bar redraws (text with a carriage return), which only make sense on a terminal."""

    def __init__(self, console: TextIO, log: TextIO) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        if "\r" not in text:
            self.log.write(ANSI_ESCAPE.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the console's
        return getattr(self.console, name)


@contextlib.contextmanager
def driver_log(path: str) -> Iterator[None]:
    """Everything the driver prints (its own lines, the actors' lines Ray forwards, errors) also goes to `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", buffering=1) as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(out, log), Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err


def remove_if_unused(run_dir: str) -> None:
    """A start that failed before writing anything leaves only Hydra's `.hydra/` and the log: remove the folder,
    so `runs/` holds runs."""
    if os.path.isdir(run_dir) and set(os.listdir(run_dir)) <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def cli(cfg: DictConfig) -> None:
    """The body of a Hydra entry point (`rlpost-train`, `rlpost-train-rm`): run, log to the run folder, and turn
    a known error into one line on stderr."""
    run_dir = os.path.abspath(cfg.trainer.run_dir)  # Hydra's run dir: it made the folder and .hydra/ in it
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a redirected log
    signals.install(graceful=cfg.trainer.checkpoint_on_signal)
    try:
        with driver_log(os.path.join(run_dir, "train.log")), one_line_errors():
            try:
                run(cfg)
            except signals.Stopped as stop:
                import ray

                ray.shutdown()  # a local cluster's processes go with the driver, not minutes later
                print(f"rlpost: error: stopped by {stop} (the report and the checkpoints so far are in {run_dir}; "
                      "trainer.resume=auto continues)", file=sys.stderr, flush=True)
                raise SystemExit(128 + stop.signum) from None
    finally:
        remove_if_unused(run_dir)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    cli(cfg)


def require_config_dir() -> None:
    if not os.path.isdir(CONFIG_DIR):  # configs/ lives in the checkout, beside the package
        print(f"rlpost: error: {CONFIG_DIR} not found; install rlpost from a checkout with `pip install -e .` "
              "(launch/setup.sh does)", file=sys.stderr)
        raise SystemExit(2)


def main() -> None:
    require_config_dir()
    _hydra_main()


if __name__ == "__main__":
    main()
