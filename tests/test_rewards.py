"""Reward plug-ins: the shipped rewards (GSM8K, format, length), the loader's errors, the process pool's
timeouts and crash recovery, the manager's weighted totals, extra metrics and failure policy, and the start-up
dry call. Test reward functions are written as files into tmp dirs, the way users provide them. One pool is
shared across the pool tests because every worker start costs ~0.3 s."""

import math
import os
import time

import pytest
import torch

from rlpost.config import ConfigError, RewardConfig, RewardFunctionConfig
from rlpost.rewards import ProcessPool, RewardManager, RewardResult, load_reward_fn, reward_label
from rlpost.rewards.loader import function_spec
from rlpost.rewards.manager import RewardFailureError
from rlpost.train import compose_config

TEST_FNS = '''
import asyncio, ctypes, os, time

def const(prompts, completions, value=1.0, **_):
    return [value] * len(completions)

async def async_len(prompts, completions, **_):
    await asyncio.sleep(0.01)
    return [len(c) / 10 for c in completions]

def with_metrics(prompts, completions, **_):
    return [{"score": 1.0, "chars": len(c), **({"long": True} if len(c) > 3 else {})} for c in completions]

def picky(prompts, completions, **_):
    if "bad" in completions:
        raise ValueError("cannot score 'bad'")
    return [1.0] * len(completions)

def forever(prompts, completions, **_):
    time.sleep(1000)

def no_columns(prompts, completions):
    return [1.0] * len(completions)

def dict_no_score(prompts, completions, **_):
    return [{"value": 1.0} for _ in completions]

def echo(prompts, completions, **columns):
    return [(p, c, columns) for p, c in zip(prompts, completions)]

def by_answer(prompts, completions, answer, **_):
    return [float(a) for a in answer]

def sleepy(prompts, completions, **_):
    if "hang" in completions:
        time.sleep(1000)
    return [1.0] * len(completions)

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

def huge(prompts, completions, **_):
    return [1e36 if c == "huge" else -2e6 if c == "low" else 1.0 for c in completions]

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
    (tmp_path / "my_rl_reward_mod.py").write_text("def score(prompts, completions, **_):\n"
                                                  "    return [0.5] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    s = RewardFunctionConfig(module="my_rl_reward_mod")
    assert load_reward_fn(s, 0)(["p"], ["c"]) == [0.5]
    with RewardManager(RewardConfig(functions=[{"module": "my_rl_reward_mod", "name": "score"}])) as manager:
        assert manager.score(["p", "q"], ["c", "d"], [{}, {}]).components == {"my_rl_reward_mod": [0.5, 0.5]}
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
    """Config entries as Hydra gives them: flat mappings whose extra keys (`value`) are the function's kwargs."""
    cfg = RewardConfig(functions=[{"path": str(fns_file), "name": "by_answer", "weight": 2},
                                  {"path": str(fns_file), "name": "const", "weight": 1.0, "value": 0.5}])
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
    assert "ValueError: boom on purpose" in errors and "returned 2 values for 1 completion" in errors


def test_runaway_scores_are_errors(fns_file):
    """A score beyond reward.max_abs_score (either sign) is treated like NaN: counted, scored error_score."""
    with RewardManager(RewardConfig(functions=[spec(fns_file, "huge")], error_score=-1.0)) as manager:
        result = manager.score(["p"] * 3, ["huge", "ok", "low"], [{}] * 3)
    assert result.total == [-1.0, 1.0, -1.0] and (result.errors, result.failed) == (2, {"testfns": 2})
    assert [f["error"] for f in result.failures] == [
        "bad return value: the score 1e+36 exceeds reward.max_abs_score=1e+06",
        "bad return value: the score -2e+06 exceeds reward.max_abs_score=1e+06"]
    with RewardManager(RewardConfig(functions=[spec(fns_file, "huge")], max_abs_score=1e37)) as manager:
        assert manager.score(["p"], ["huge"], [{}]).total == [1e36]


def test_manager_config_errors(fns_file):
    with pytest.raises(ConfigError, match=r"reward\.functions\[1\]\.name"):
        RewardManager(RewardConfig(functions=[spec(fns_file, "const"), spec(fns_file, "nope")]))
    with pytest.raises(ConfigError, match=r"reward\.num_workers"):
        RewardManager(RewardConfig(num_workers=0))


def test_entry_parsing_errors(fns_file):
    assert function_spec({"path": "a.py", "weight": 2, "value": 0.5}, 0) == RewardFunctionConfig(
        path="a.py", name="score", weight=2.0, kwargs={"value": 0.5})
    for entry, pattern in [
        ({"path": "a.py", "weight": "heavy"}, r"^reward\.functions\[2\]\.weight: expected a number, got 'heavy'"),
        ({"path": 3}, r"^reward\.functions\[2\]\.path: expected a string"),
        ("rewards/gsm8k.py", r"^reward\.functions\[2\]: expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            function_spec(entry, 2)
    # A misspelt keyword argument would vanish into `**_`: named instead.
    with pytest.raises(ConfigError, match=r"^reward\.functions\[2\]\.vlaue: const\(\) has no parameter 'vlaue'"):
        load_reward_fn({"path": str(fns_file), "name": "const", "vlaue": 0.5}, 2)


def test_async_plugin(fns_file):
    with RewardManager(RewardConfig(functions=[spec(fns_file, "async_len")])) as manager:
        result = manager.score(["p", "q"], ["ab", "abcde"], [{}, {}])
        manager.dry_run(["p", "q"], [{}, {}])  # the batched call is awaited the same way
    assert result.components == {"testfns": [0.2, 0.5]} and result.errors == 0


def test_dict_return_extra_metrics(fns_file):
    cfg = RewardConfig(functions=[spec(fns_file, "with_metrics", weight=0.5)])
    with RewardManager(cfg) as manager:
        a = manager.score(["p", "q"], ["ab", "abcde"], [{}, {}])
        b = manager.score(["r"], ["xy"], [{}])
    assert a.components == {"testfns": [1.0, 1.0]} and a.total == [0.5, 0.5]
    assert a.extras["testfns/chars"] == [2.0, 5.0]
    assert math.isnan(a.extras["testfns/long"][0]) and a.extras["testfns/long"][1] == 1.0
    # Two reward actors' slices: a metric only one slice reported is NaN for the other's items.
    both = RewardResult.concat([a, b])
    assert both.extras["testfns/chars"] == [2.0, 5.0, 2.0]
    assert both.extra_means() == {"testfns/chars": 3.0, "testfns/long": 1.0}


def test_raising_on_one_item(fns_file):
    with RewardManager(RewardConfig(functions=[spec(fns_file, "picky")], error_score=-0.5)) as manager:
        one = manager.score(["p"] * 4, ["ok", "bad", "ok", "ok"], [{}] * 4)
        most = manager.score(["p"] * 4, ["bad", "bad", "ok", "bad"], [{}] * 4)
    assert one.total == [1.0, -0.5, 1.0, 1.0] and (one.errors, one.timeouts, one.failed) == (1, 0, {"testfns": 1})
    assert one.failures == [{"label": "testfns", "prompt": "p", "completion": "bad",
                             "error": "ValueError: cannot score 'bad'"}]
    one.check_failures(0.5)  # one bad sample never stops a run
    most.check_failures(0.75)
    with pytest.raises(RewardFailureError, match=r"^reward: 3 of 4 items failed in reward function 'testfns', "
                       r"more than reward\.max_failure_frac=0\.5 \(first error: ValueError: cannot score 'bad'\); "
                       r"the first failing samples are in /run/f\.jsonl; fix the function") as info:
        most.check_failures(0.5, "/run/f.jsonl")
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


def test_hanging_items_and_batch_timeout(fns_file):
    """Each hung item is killed at reward.item_timeout_s; the whole batch at reward.batch_timeout_s, after which
    the items not yet started are timeouts without running."""
    cfg = RewardConfig(functions=[spec(fns_file, "sleepy")], num_workers=1, item_timeout_s=30, batch_timeout_s=1.5)
    with RewardManager(cfg) as manager:
        assert manager.pool.wait_ready(timeout_s=30)
        t = time.perf_counter()
        result = manager.score(["p"] * 3, ["ok", "hang", "ok"], [{}] * 3)
        elapsed = time.perf_counter() - t
    assert result.total == [1.0, 0.0, 0.0] and (result.errors, result.timeouts) == (0, 2)
    assert [f["error"] for f in result.failures] == [
        "timed out: the batch limit of 1.5 s passed",
        "not run: the batch limit of 1.5 s passed before its turn"]
    assert 1.4 < elapsed < 4, elapsed


def dry_run(cfg: RewardConfig, prompts: list[str], columns: list[dict]) -> None:
    with RewardManager(cfg) as manager:
        manager.dry_run(prompts, columns)


@pytest.mark.parametrize("name, pattern", [
    ("wrong_len", r"the dry call on the first batch \(3 prompts\) returned 2 values for 3 completions; it must "
                  r"return a list of floats, or of dicts with a 'score', one per completion$"),
    ("not_number", r"returned 1 value for 3 completions"),
    ("dict_no_score", r"item 0: a dict without a 'score' key \(keys: \['value'\]\)"),
    ("boom", r"the dry call on the first batch \(3 prompts\) failed: ValueError: boom on purpose; fix the function$"),
    ("forever", r"did not return within 1\.5 s; fix the function or raise reward\.item_timeout_s"),
    ("no_columns", r"no_columns\(prompts, completions\) cannot be called as no_columns\(prompts, completions, "
                   r"answer=\.\.\., id=\.\.\.\): got an unexpected keyword argument 'answer'; the signature must be "
                   r"fn\(prompts, completions, \*\*columns\)"),
])
def test_dry_call_rejects_broken_plugins(fns_file, name, pattern):
    cfg = RewardConfig(functions=[spec(fns_file, "const"), spec(fns_file, name)], item_timeout_s=0.5)
    with pytest.raises(ConfigError, match=r"^reward\.functions\[1\] \(testfns_2\): .*" + pattern) as info:
        dry_run(cfg, ["p0", "p1", "p2"], [{"answer": "1", "id": i} for i in range(3)])
    assert "\n" not in str(info.value)


def test_own_reward_alone_gives_accuracy_from_its_total(fns_file, tiny_model_dir, tmp_path):
    """README's "Your own reward" with only the user's function: the driver starts (no gsm8k component needed)
    and logs `accuracy` as the share of completions whose total reward is > 0."""
    from rlpost.rollout.engine import Sample
    from rlpost.trainer import Trainer

    cfg = compose_config(["experiment=gsm8k_grpo_debug", "data.limit=16", f"trainer.run_dir={tmp_path}",
                          f"reward.functions=[{{path: {fns_file}, name: const}}]"])
    trainer = Trainer(cfg, tiny_model_dir, str(tmp_path))
    samples = [Sample([1], [2, 3], [0.0, 0.0], "stop") for _ in range(4)]
    result = RewardResult(total=[1.0, 0.0, 0.5, -1.0], components={"testfns": [1.0, 0.0, 0.5, -1.0]}, errors=0,
                          timeouts=0)
    assert trainer.sample_metrics(samples, result, torch.tensor(result.total))["accuracy"] == 0.5


def test_validate_reward_fields(tmp_path):
    from rlpost.validate import validate

    for override, pattern in [
        ("reward.max_failure_frac=1.5", r"^reward\.max_failure_frac=1\.5: must be in \[0, 1\]"),
        ("reward.batch_timeout_s=0", r"^reward\.batch_timeout_s=0\.0: must be > 0"),
        (f"reward.models=[{{path: {tmp_path}/rm}}]", r"^reward\.models\[0\]\.path: '.*/rm' is not a Hugging Face"),
        ("reward.functions=[{path: rewards/length.py, max_lenght: 80}]",
         r"^reward\.functions\[0\]\.max_lenght: score\(\) has no parameter 'max_lenght'"),
    ]:
        cfg = compose_config(["experiment=gsm8k_grpo_debug", override])
        with pytest.raises(ConfigError, match=pattern):
            validate(cfg)


# ---- rewards/format.py and rewards/length.py --------------------------------------------------------------


def test_format_reward():
    fn = load_reward_fn(RewardFunctionConfig(path="rewards/format.py"), 0)
    completions = ["so 6 * 7 = 42\n#### 42", "#### -1,250.5\n\n", "#### 42 apples", "#### 42\nthen more text",
                   "it is $\\boxed{42}$", "\\boxed{}", "no answer", ""]
    assert [x["score"] for x in fn([""] * 8, completions)] == [1, 1, 0, 0, 1, 0, 0, 0]
    assert [x["score"] for x in fn([""] * 8, completions, style="hash")] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert [x["score"] for x in fn([""] * 8, completions, style="boxed")] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert fn(["q"], ["\\boxed{7}\n#### 7"])[0] == {"score": 1.0, "hash": 1.0, "boxed": 1.0}


def test_format_reward_asks_for_shown_work():
    """min_work_lines=2: two lines with a number before the answer line; the shape metrics ignore it."""
    fn = load_reward_fn(RewardFunctionConfig(path="rewards/format.py"), 0)
    completions = ["#### 12",                                  # a bare answer: the measured reward hack
                   "Let me think.\nSo:\n#### 12",            # lines, but no computation in them
                   "6 * 2 = 12\n#### 12",                     # one line of work
                   "6 * 2 = 12\n\n12 + 0 = 12\n#### 12",      # two (the empty line does not count)
                   "3 + 4 = 7\n7 * 2 = 14\nso $\\boxed{14}$",  # boxed, two lines before it
                   "$\\boxed{14}$\n3 + 4 = 7\n7 * 2 = 14"]     # work after the boxed answer does not count
    out = fn([""] * 6, completions, style="any", min_work_lines=2)
    assert [x["score"] for x in out] == [0, 0, 0, 1, 1, 0]
    assert [x["hash"] for x in out] == [1, 1, 1, 1, 0, 0]
    assert [x["boxed"] for x in out] == [0, 0, 0, 0, 1, 1]
    assert [x["score"] for x in fn([""] * 6, completions, style="hash", min_work_lines=1)] == [0, 0, 1, 1, 0, 0]
    assert [x["score"] for x in fn([""] * 6, completions, style="hash")] == [1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="min_work_lines"):
        fn([""], ["#### 1"], min_work_lines=-1)


def test_length_penalty():
    fn = load_reward_fn(RewardFunctionConfig(path="rewards/length.py"), 0)
    # max_length 10, buffer 4: free up to 6 characters, then -1/4 per character, -1 beyond 10.
    out = fn([""] * 5, ["x" * n for n in (0, 6, 7, 10, 11)], max_length=10, buffer=4)
    assert [x["score"] for x in out] == [0.0, 0.0, -0.25, -1.0, -1.0]
    assert [x["overlong"] for x in out] == [0.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="buffer"):
        fn([""], ["x"], max_length=10, buffer=0)


def test_shipped_rewards_pass_the_dry_call():
    cfg = RewardConfig(functions=[{"path": "rewards/gsm8k.py"}, {"path": "rewards/format.py", "style": "hash"},
                                  {"path": "rewards/length.py", "max_length": 800, "buffer": 200}])
    dry_run(cfg, ["q1", "q2"], [{"answer": "#### 42"}, {"answer": "#### 7"}])


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
