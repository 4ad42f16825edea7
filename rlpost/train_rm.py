"""`rlpost-train-rm`: train a reward model on preference pairs, with rlpost-train's learner and config.

    rlpost-train-rm pairs.path=pairs.jsonl model.path=/models/Qwen2.5-0.5B-Instruct trainer.steps=200

The root config is `configs/rm.yaml`: rlpost-train's schema (`rlpost/config.py`) with the `algo=reward_model`
preset and its own defaults (one learner rank, LR 1e-5). Why the same schema and not a separate one: every learner,
cluster, logger and checkpoint option, every preset and the validator then work unchanged, and `rlpost-train
algo=reward_model ...` runs the very same thing. The run itself is `rlpost.offline.OfflineTrainer`: a
one-output sequence-classification head on the model folder (`rlpost.learner.reward_model`), the Bradley-Terry
loss (`algo.rm_loss`), held-out pair accuracy (`eval/pair_accuracy`), checkpoints, and `<run_dir>/hf_model`,
which `reward.models=[{path: <run_dir>/hf_model}]` loads as is. Pairs: `pairs.*` (keys, held-out split, what a
bad row does); `python -m rlpost.pairs` samples them from a model.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rlpost.train import CONFIG_DIR, cli, require_config_dir


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="rm")
def _hydra_main(cfg: DictConfig) -> None:
    cli(cfg)


def main() -> None:
    require_config_dir()
    _hydra_main()


if __name__ == "__main__":
    main()
