"""Reward plug-ins: the shipped GSM8K scorer, the loader's errors, the process pool's timeouts and crash
recovery, and the manager's weighted totals. Test reward functions are written as files into tmp dirs, the
way users provide them. One pool is shared across the pool tests because every worker start costs ~0.3 s."""

import os
import time

import pytest

from rlpost.config import ConfigError, RewardConfig, RewardFunctionConfig
from rlpost.rewards import ProcessPool, RewardManager, load_reward_fn, reward_label

TEST_FNS = '''
import ctypes, os, time

def const(prompts, completions, value=1.0, **_):
    return [value] * len(completions)

def echo(prompts, completions, **columns):
    return [(p, c, columns) for p, c in zip(prompts, completions)]

def by_answer(prompts, completions, answer, **_):
    return [float(a) for a in answer]

def sleepy(prompts, completions, **_):
    if completions[0] == "hang":
        time.sleep(1000)
    return [1.0]

def boom(prompts, completions, **_):
    raise ValueError("boom on purpose")

def die(prompts, completions, **_):
    os._exit(3)

def segfault(prompts, completions, **_):
    ctypes.string_at(0)

def wrong_len(prompts, completions, **_):
    return [1.0, 2.0]

def not_number(prompts, completions, **_):
    return ["x"]

def nan(prompts, completions, **_):
    return [float("nan")]

NOT_FN = 3
'''
POOL_FNS = ["echo", "sleepy", "boom", "die", "segfault"]


@pytest.fixture(scope="module")
def fns_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fns") / "testfns.py"
    path.write_text(TEST_FNS)
    return path


def spec(path, name, **kw) -> RewardFunctionConfig:
    return RewardFunctionConfig(path=str(path), name=name, **kw)


# ---- rewards/gsm8k.py -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_score():
    return load_reward_fn(RewardFunctionConfig(path="rewards/gsm8k.py", name="score"), 0)


@pytest.mark.parametrize("completion, answer, expected", [
    ("48 + 24 = 72.\n#### 72", "Natalia sold 48+24 = 72 clips.\n#### 72", 1.0),
    ("48 + 24 = 71.\n#### 71", "#### 72", 0.0),
    ("She sold 48 and then 24, so the answer is 72.", "#### 72", 1.0),  # no '####': math-verify extracts
    ("#### 1000", "#### 1,000", 1.0),  # GSM8K golds have thousands separators
    ("So the total is #### 1,000", "#### 1000", 1.0),
    ("Total: $\\boxed{72}$", "#### 72", 1.0),
    ("I don't know.", "#### 72", 0.0),
    ("", "#### 72", 0.0),
])
def test_gsm8k(gsm8k_score, completion, answer, expected):
    assert gsm8k_score(["q"], [completion], answer=[answer]) == [expected]


def test_gsm8k_batched(gsm8k_score):
    assert gsm8k_score(["a", "b"], ["#### 3", "#### 4"], answer=["#### 3", "#### 5"], extra=[1, 2]) == [1.0, 0.0]


# ---- loader -----------------------------------------------------------------------------------------------


def test_load_from_path_absolute_and_relative(fns_file, monkeypatch):
    assert load_reward_fn(spec(fns_file, "const"), 0)(["p"], ["c"], value=2.0) == [2.0]
    monkeypatch.chdir(fns_file.parent)
    assert load_reward_fn(spec("testfns.py", "const"), 0)(["p"], ["c"]) == [1.0]


def test_default_path_resolves_against_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no rewards/ here: found next to the rlpost package
    assert callable(load_reward_fn(RewardFunctionConfig(path="rewards/gsm8k.py"), 0))


def test_load_from_module(tmp_path, monkeypatch):
    (tmp_path / "my_rl_reward_mod.py").write_text("def score(prompts, completions, **_):\n    return [0.5]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = RewardFunctionConfig(module="my_rl_reward_mod")
    assert load_reward_fn(s, 0)(["p"], ["c"]) == [0.5]
    assert reward_label(s) == "my_rl_reward_mod"
    assert reward_label(RewardFunctionConfig(module="pkg.sub.acc")) == "acc"
    assert reward_label(RewardFunctionConfig(path="x/y/gsm8k.py")) == "gsm8k"


@pytest.mark.parametrize("kind, pattern", [
    ("missing_file", r"^reward\.functions\[3\]\.path: file 'nope/missing\.py' not found"),
    ("missing_fn", r"^reward\.functions\[3\]\.name: no 'nope' in .*testfns\.py \(it defines: .*const"),
    ("not_callable", r"^reward\.functions\[3\]\.name: 'NOT_FN' .* is a int, not a function"),
    ("import_fails", r"^reward\.functions\[3\]\.path: importing .* failed: ZeroDivisionError"),
    ("missing_module", r"^reward\.functions\[3\]\.module: cannot import 'no_such_mod_xyz': ModuleNotFound"),
    ("both", r"^reward\.functions\[3\]: both path .* and module .* set; set exactly one"),
    ("neither", r"^reward\.functions\[3\]: neither path nor module is set"),
])
def test_loader_errors(fns_file, tmp_path, kind, pattern):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1 / 0\n")
    s = {
        "missing_file": RewardFunctionConfig(path="nope/missing.py"),
        "missing_fn": spec(fns_file, "nope"),
        "not_callable": spec(fns_file, "NOT_FN"),
        "import_fails": spec(bad, "score"),
        "missing_module": RewardFunctionConfig(module="no_such_mod_xyz"),
        "both": RewardFunctionConfig(path=str(fns_file), module="json"),
        "neither": RewardFunctionConfig(),
    }[kind]
    with pytest.raises(ConfigError, match=pattern) as info:
        load_reward_fn(s, 3)
    assert "\n" not in str(info.value)


# ---- pool -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(fns_file):
    with ProcessPool([spec(fns_file, name) for name in POOL_FNS], num_workers=2) as p:
        t = time.perf_counter()
        assert p.wait_ready(timeout_s=30)
        print(f"\npool start-up (2 workers, no math-verify): {time.perf_counter() - t:.2f} s")
        yield p


def test_pool_results_in_order(pool):
    calls = [(0, ([f"p{i}"], [f"c{i}"]), {"answer": [i]}) for i in range(20)]
    results = pool.map(calls, timeout_s=10)
    assert [r.error for r in results] == [None] * 20
    assert [r.value for r in results] == [[(f"p{i}", f"c{i}", {"answer": [i]})] for i in range(20)]
    assert pool.map([], timeout_s=1) == []


def test_pool_timeout_is_isolated_and_pool_recovers(pool):
    calls = [(1, (["p"], [c]), {}) for c in ["a", "hang", "b", "c", "d", "e"]]
    t = time.perf_counter()
    results = pool.map(calls, timeout_s=1.0)
    elapsed = time.perf_counter() - t
    assert [r.timed_out for r in results] == [False, True, False, False, False, False]
    assert "timed out after 1 s" in results[1].error
    assert all(r.value == [1.0] for i, r in enumerate(results) if i != 1)
    assert elapsed < 3.0, elapsed
    # The hung worker was killed and replaced: both workers answer again (a replacement starts within budget).
    results = pool.map([(1, (["p"], [str(i)]), {}) for i in range(6)], timeout_s=10)
    assert all(r.value == [1.0] for r in results)


def test_pool_exception_becomes_error(pool):
    (result,) = pool.map([(2, (["p"], ["c"]), {})], timeout_s=10)
    assert result.error == "ValueError: boom on purpose" and not result.timed_out


@pytest.mark.parametrize("fn_index, reason", [(3, "exit code 3"), (4, "killed by SIGSEGV")])
def test_pool_worker_death_is_an_error_and_pool_recovers(pool, fn_index, reason):
    results = pool.map([(0, (["p"], ["a"]), {}), (fn_index, (["p"], ["c"]), {}), (0, (["p"], ["b"]), {})], 10)
    assert results[1].value is None and reason in results[1].error and not results[1].timed_out
    assert results[0].value == [("p", "a", {})] and results[2].value == [("p", "b", {})]
    assert all(r.error is None for r in pool.map([(0, (["p"], ["c"]), {})] * 4, timeout_s=10))


def test_pool_load_failure_in_worker_is_reported_per_call(tmp_path):
    with ProcessPool([RewardFunctionConfig(path=str(tmp_path / "gone.py"))], num_workers=1) as p:
        results = p.map([(0, (["p"], ["c"]), {})] * 2, timeout_s=10)
    assert all("loading the reward functions" in r.error and "not found" in r.error for r in results)


# ---- manager ----------------------------------------------------------------------------------------------


def test_manager_weighted_sum_and_labels(fns_file):
    cfg = RewardConfig(functions=[spec(fns_file, "by_answer", weight=2.0),
                                  spec(fns_file, "const", weight=1.0, kwargs={"value": 0.5})])
    with RewardManager(cfg) as manager:
        assert manager.labels == ["testfns", "testfns_2"]
        result = manager.score(["p0", "p1", "p2"], ["c0", "c1", "c2"], [{"answer": a} for a in ["0", "1", "3"]])
    assert result.components == {"testfns": [0.0, 1.0, 3.0], "testfns_2": [0.5, 0.5, 0.5]}
    assert result.total == [0.5, 2.5, 6.5]
    assert (result.errors, result.timeouts, result.failures) == (0, 0, [])


def test_manager_counts_errors_and_timeouts(fns_file):
    names = ["sleepy", "boom", "wrong_len", "not_number", "nan"]
    cfg = RewardConfig(functions=[spec(fns_file, n) for n in names], item_timeout_s=1.0, error_score=-1.0)
    with RewardManager(cfg) as manager:
        labels = manager.labels
        result = manager.score(["p", "q"], ["ok", "hang"], [{}, {}])
    assert labels == ["testfns", "testfns_2", "testfns_3", "testfns_4", "testfns_5"]
    assert [result.components[label] for label in labels] == [[1.0, -1.0]] + [[-1.0, -1.0]] * 4
    assert (result.errors, result.timeouts) == (8, 1)
    assert result.total == [-3.0, -5.0]
    assert len(result.failures) == 5
    first = result.failures[0]
    assert (first["label"], first["prompt"], first["completion"]) == ("testfns", "q", "hang")
    assert "timed out" in first["error"]
    errors = " | ".join(f["error"] for f in result.failures)
    assert "ValueError: boom on purpose" in errors and "got 2 values" in errors


def test_manager_config_errors(fns_file):
    with pytest.raises(ConfigError, match=r"reward\.functions\[1\]\.name"):
        RewardManager(RewardConfig(functions=[spec(fns_file, "const"), spec(fns_file, "nope")]))
    with pytest.raises(ConfigError, match=r"reward\.num_workers"):
        RewardManager(RewardConfig(num_workers=0))


def test_gsm8k_throughput():
    """Prints items/s of the shipped GSM8K reward through the full manager path (2 worker processes)."""
    items = 200
    # GSM8K-like completions of ~400 characters; every third one has no '####', so math-verify must extract the
    # answer from the whole text (the slow path), and every fifth one is wrong.
    steps = "Natalia sold 48 clips in April. In May she sold half as many: 48 / 2 = 24 clips. " * 4
    finals = [2 * i + (i % 5 == 0) for i in range(items)]
    completions = [steps + (f"#### {x}" if i % 3 else f"So the answer is {x}.") for i, x in enumerate(finals)]
    columns = [{"answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"} for i in range(items)]
    t = time.perf_counter()
    with RewardManager(RewardConfig(num_workers=2)) as manager:
        assert manager.pool.wait_ready(timeout_s=30)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        result = manager.score(["q"] * items, completions, columns)
        elapsed = time.perf_counter() - t
    assert (result.errors, result.timeouts) == (0, 0)
    assert result.components["gsm8k"] == [0.0 if i % 5 == 0 else 1.0 for i in range(items)]
    print(f"\ngsm8k reward: {items / elapsed:.0f} items/s with 2 workers on {os.cpu_count()} CPUs "
          f"(pool start-up incl. math-verify import: {startup:.2f} s)")
