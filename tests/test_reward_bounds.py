"""Reward workers' memory and output bounds (issue 17 item 7), against the real process pool: a plug-in that
allocates 2 GB fails its own item and its worker is replaced; one that prints 10 MiB per call is cut to
`reward.max_output_kb` with one note."""

from __future__ import annotations

import pytest

from rlpost.config import ConfigError, RewardConfig, RewardFunctionConfig
from rlpost.rewards import ProcessPool, RewardManager
from rlpost.train import compose_config

PLUGINS = '''
import sys

def hog(prompts, completions, **_):
    block = bytearray(2 * 2**30)  # 2 GB
    return [float(len(block))] * len(completions)

def modest(prompts, completions, **_):
    block = bytearray(100 * 2**20)  # 100 MB: well inside the limit the tests set
    return [float(len(block) > 0)] * len(completions)

def chatty(prompts, completions, **_):
    for _ in range(10 * 1024):  # 10 MiB of prints, half of them to stderr
        print("x" * 1023, file=sys.stderr if _ % 2 else sys.stdout)
    return [1.0] * len(completions)
'''
FNS = ["hog", "modest", "chatty"]
HOG, MODEST, CHATTY = range(3)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    path = tmp_path_factory.mktemp("bounds") / "bound_fns.py"
    path.write_text(PLUGINS)
    return path


def specs(path) -> list[RewardFunctionConfig]:
    return [RewardFunctionConfig(path=str(path), name=name) for name in FNS]


def test_memory_hog_fails_its_item_and_its_worker_is_replaced(plugins):
    with ProcessPool(specs(plugins), num_workers=1, max_memory_mb=512) as pool:
        assert pool.wait_ready()
        first = pool._workers[0].proc.pid
        hogged, after = pool.map([(HOG, ([""], [""]), {}), (MODEST, ([""], [""]), {})], timeout_s=30)
        assert hogged.error is not None and not hogged.timed_out
        assert "MemoryError" in hogged.error and "reward.max_worker_memory_mb=512" in hogged.error
        assert after.value == [1.0], after.error  # the next item runs, on a fresh worker, within the limit
        assert pool._workers[0].proc.pid != first and pool._workers[0].proc.is_alive()


def test_memory_hog_scores_error_score_and_is_counted(plugins):
    cfg = RewardConfig(functions=[{"path": str(plugins), "name": "hog"}], num_workers=2, max_worker_memory_mb=512,
                       error_score=-1.0, item_timeout_s=30)
    with RewardManager(cfg) as manager:
        for _ in range(2):  # the replaced workers serve the second batch the same way: the run goes on
            result = manager.score(["p"] * 3, ["c"] * 3, [{}] * 3)
            assert result.total == [-1.0] * 3 and result.errors == 3 and result.timeouts == 0
            assert "max_worker_memory_mb" in result.failures[0]["error"]


def test_output_past_the_cap_is_dropped_with_one_note(plugins, capfd):
    with ProcessPool(specs(plugins), num_workers=2, max_output_kb=64) as pool:
        assert pool.wait_ready()
        capfd.readouterr()
        results = pool.map([(CHATTY, ([""], [""]), {})] * 4, timeout_s=60)
        assert [r.value for r in results] == [[1.0]] * 4
        out, err = capfd.readouterr()
    printed = len(out) + len(err)
    # 4 calls x 64 KB, plus the note; 10 MiB per call without the cap
    assert 4 * 64 * 1024 <= printed < 4 * 64 * 1024 + 4096, printed
    assert (out + err).count("reward.max_output_kb=64 KB") == 1


@pytest.mark.parametrize("override, pattern", [
    ("reward.max_worker_memory_mb=-1", r"^reward\.max_worker_memory_mb=-1: must be >= 0"),
    ("reward.max_output_kb=-5", r"^reward\.max_output_kb=-5: must be >= 0"),
])
def test_validate_bounds(override, pattern):
    from rlpost.validate import validate

    with pytest.raises(ConfigError, match=pattern):
        validate(compose_config(["experiment=gsm8k_grpo_debug", override]))
