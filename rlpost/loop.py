"""The training loop both drivers run, the online `rlpost.trainer.Trainer` and the offline
`rlpost.offline.OfflineTrainer`: steps, evaluations, the collapse guards, checkpoints, a stop at a step boundary
on SIGTERM/SIGINT, the wall-clock budget, resuming, and the export. A driver supplies `step` and `evaluation` (and
its actors, loader and learner groups); one loop means a resumed, stopped or budgeted run behaves the same online
and offline.

The collapse guards (`trainer.max_kl`, `trainer.min_entropy`) read a step's metrics in the driver: the learner
already reports the policy's KL to the reference and its entropy every step, so no actor needs to know about them.
They complement the learner's non-finite guard (`learner.max_skipped_updates`): a run can diverge with every
number finite, e.g. a learning rate so large that the policy turns deterministic (entropy 0) in a few steps.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlpost import checkpoint as ckpt
from rlpost import signals
from rlpost.cluster.groups import ActorDied, LearnerGroup
from rlpost.config import RunError
from rlpost.metrics import MetricsLogger
from rlpost.trainer_checkpointing import TrainerCheckpointing

# (metric, config field, whether the metric must stay below the field's value) for each collapse guard
COLLAPSE_GUARDS = (("actor/kl", "trainer.max_kl", True), ("actor/entropy", "trainer.min_entropy", False))


def collapse(metrics: dict[str, float], max_kl: float, min_entropy: float) -> str | None:
    """Why this step's metrics say the policy collapsed, or None. A limit of 0 is off; a step without the metric
    (a DPO step with no pair, a critic warm-up step) or with a NaN value (the non-finite guard's case) passes."""
    limits = {"trainer.max_kl": max_kl, "trainer.min_entropy": min_entropy}
    for metric, field, upper in COLLAPSE_GUARDS:
        limit, value = limits[field], metrics.get(metric)
        if limit > 0 and value is not None and (value > limit if upper else value < limit):
            return f"{metric}={value:.4g} is {'above' if upper else 'below'} {field}={limit:g}"
    return None


def last_checkpoint_note(checkpoints: ckpt.CheckpointManager) -> str:
    """Where a stopped run continues from: its newest complete checkpoint."""
    latest: list[Path] = checkpoints.complete()
    return (f"the last checkpoint is {latest[0]} (trainer.resume=auto continues from it)" if latest
            else "no checkpoint was written yet")


def stop_if_collapsed(step: int, metrics: dict[str, float], max_kl: float, min_entropy: float,
                      checkpoints: ckpt.CheckpointManager) -> None:
    """RunError, one line, when step `step` collapsed (`collapse`). Called before the step is checkpointed: a
    collapsed policy is never saved, and the checkpoints before it are neither replaced nor pruned."""
    reason = collapse(metrics, max_kl, min_entropy)
    if reason is not None:
        raise RunError(f"step {step}: {reason}: the policy collapsed and this step is not checkpointed; "
                       f"{last_checkpoint_note(checkpoints)}; lower learner.lr, or move the threshold")


class TrainLoop(TrainerCheckpointing, ABC):
    def __init__(self, cfg: DictConfig, model_path: str, run_dir: str) -> None:
        self.cfg, self.model_path, self.run_dir = cfg, model_path, run_dir
        self.checkpoints = ckpt.CheckpointManager(run_dir, cfg.trainer.keep_checkpoints)
        self.fingerprint = ckpt.fingerprint(cfg, model_path)
        self.start_step = 0  # the last finished step (a resumed run continues after it)
        self.resume_from: Path | None = None
        self.resume_state: dict = {}
        self.resume_groups: list[str] = []
        # Learner groups whose state a checkpoint holds, by name (a critic group registers as "critic").
        self.checkpoint_groups: dict[str, LearnerGroup] = {}
        self.cluster_resources: dict[str, float] = {}

    @abstractmethod
    def step(self, step: int) -> dict[str, float]:
        """Train step `step`; its metrics."""

    @abstractmethod
    def evaluation(self, step: int, final: bool) -> dict[str, float]:
        """The evaluation's metrics if one is due after step `step` (0: before training), else {}."""

    def fit(self) -> list[dict[str, float]]:
        """Train from `start_step + 1` to `trainer.steps`, or until `trainer.max_minutes` of training have passed
        (then the step that crossed the budget is the last): evaluate where `evaluation` says; checkpoint every
        `trainer.save_every` steps and at the last (unless `trainer.final_checkpoint=false`); export the final model.

        `time/wall` is the seconds since the start of training (the step-0 evaluation included, start-up not),
        continued across resumes, so the budget and the report's wall-clock axis cover the whole run."""
        cfg, last = self.cfg, self.cfg.trainer.steps
        logger = MetricsLogger(self.run_dir, last, cfg.logger.wandb.mode, cfg.logger.wandb.project,
                               OmegaConf.to_container(cfg, resolve=True), progress=cfg.logger.progress,
                               start_step=self.start_step)
        past = self.resume_state.get("metrics", [])
        history = [{k: v for k, v in row.items() if k != "step"} for row in past if row["step"] > 0]
        t0 = time.perf_counter() - (past[-1].get("time/wall", 0.0) if past else 0.0)
        try:
            try:
                self._fit(logger, history, t0)
            finally:
                logger.close()
            if cfg.trainer.export_hf:
                self.export_hf()
        except ActorDied as err:  # one line: the dead actor, its node and where to continue from
            raise RunError(f"{err}; {last_checkpoint_note(self.checkpoints)}") from None
        return history

    def _fit(self, logger: MetricsLogger, history: list[dict[str, float]], t0: float) -> None:
        """`fit`'s loop: steps (appended to `history`), evaluations and checkpoints."""
        cfg, last = self.cfg, self.cfg.trainer.steps
        budget = cfg.trainer.max_minutes * 60
        if self.start_step == 0:
            metrics = self.evaluation(0, final=False)
            if metrics:
                logger.log(0, metrics | {"time/wall": time.perf_counter() - t0}, advance=False)
        for step in range(self.start_step + 1, last + 1):
            metrics = self.step(step)
            final = step == last or 0 < budget <= time.perf_counter() - t0
            metrics.update(self.evaluation(step, final))
            metrics["time/wall"] = time.perf_counter() - t0
            logger.log(step, metrics)
            history.append(metrics)
            stop_if_collapsed(step, metrics, cfg.trainer.max_kl, cfg.trainer.min_entropy, self.checkpoints)
            periodic = bool(cfg.trainer.save_every and step % cfg.trainer.save_every == 0)
            saved = periodic or (final and cfg.trainer.final_checkpoint)
            if saved:
                self.save_checkpoint(step)
            stop = signals.pending()  # SIGTERM/SIGINT asked for a stop at this boundary (rlpost.signals)
            if stop is not None and not final:
                if not saved:
                    self.save_checkpoint(step)
                raise signals.Stopped(stop)
            if final:
                if step < last:
                    print(f"[rlpost] trainer.max_minutes={cfg.trainer.max_minutes:g} reached: step {step} "
                          f"was the last of {last}", flush=True)
                break
