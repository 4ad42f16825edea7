"""Shared test set-up: process environment, the `gpu` and `slow` markers, the local Ray cluster and the tiny model
fixture. Helpers that tests import are in `helpers.py`."""

import os

# Before anything imports torch/Ray/wandb: one thread per process (2-core machines oversubscribe badly), no
# network, no Ray auth token, no wandb login.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the slow marks added here count
def pytest_collection_modifyitems(config, items):
    """Integration and GPU tests are slow tests too (`-m "not slow"` leaves them out); GPU tests skip without one."""
    import torch

    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "integration" in item.keywords or "gpu" in item.keywords:
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and skip_gpu is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray cluster (loopback) for one test module's actors."""
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """Folder of the tiny random Llama with the real SmolLM2 tokenizer (see `rlpost.models.build_tiny_model`).

    Built once and cached under ${RLPOST_CACHE:-~/.cache/rlpost}/test-models, keyed by a hash of
    rlpost/models.py and the transformers version, so any change to how it is built rebuilds it (~8 s) and
    otherwise the suite skips that cost. `build_once` makes concurrent test sessions safe and rebuilds a folder
    with files missing. Tests must not write into it.
    """
    import transformers

    from rlpost import models

    source = Path(models.__file__).read_bytes() + transformers.__version__.encode()
    key = hashlib.sha256(source).hexdigest()[:12]
    final = models.cache_dir() / "test-models" / f"tiny-llama-{key}"
    return models.build_once(final, lambda tmp: models.build_tiny_model(tmp, seed=0))
