"""`rlpost-submit`: run `rlpost-train` as a Ray job on a running cluster, follow its logs, report its status.

    rlpost-submit --address http://HEAD:8265 -- experiment=gsm8k_grpo model.path=/models/Qwen2.5-0.5B-Instruct \\
        trainer.run_dir=/shared/runs/qwen-grpo

does what this would, plus the parts that are easy to get wrong by hand:

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"env_vars": {...}, "excludes": [".git", ".venv", "runs", ...]}' \\
        -- python -m rlpost.train experiment=gsm8k_grpo ... trainer.run_dir=/shared/runs/qwen-grpo

- The working dir (an rlpost checkout: the package, configs/, rewards/, your reward files) is uploaded, and the
  job runs `python -m rlpost.train` in Ray's copy of it. `-m` imports rlpost from that copy ahead of any installed
  one, so the job runs exactly the code you submitted; the cluster only needs rlpost's dependencies, with `python`
  on its PATH being that environment (start `ray start` from the activated venv, or pass --python).
- Ray deletes its copy of the working dir when the job ends, so the run folder must be absolute: a relative
  `trainer.run_dir` is made absolute against the directory you submit from, and without one the run goes to
  `<that directory>/runs/<experiment>-<time>`. On a multi-node cluster it must be storage every node can reach
  (learner ranks write their checkpoint shards there).
- Settings rlpost reads from the environment (offline switches, caches, wandb mode, NVLink-multicast switches;
  `PASSED_ENV`) are forwarded when set; add others with --env KEY=VALUE.

It prints the job id, streams the job's logs until it ends, and exits 0 only if the job SUCCEEDED
(--no-wait: print the id and return). An unreachable address is one line, as is every other bad argument.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from rlpost.cluster.ray_cluster import PASSED_ENV

EXCLUDES = [".git", ".venv", "runs", "outputs", "wandb", "__pycache__", "*.egg-info", ".pytest_cache",
            ".ruff_cache"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(Exception):
    """A bad argument or an unreachable cluster, as one line."""


def _override(overrides: list[str], key: str) -> tuple[int, str] | None:
    """(index, value) of `key=value` (also `+key=` / `++key=`) among Hydra overrides, if present."""
    for i, o in enumerate(overrides):
        name, sep, value = o.lstrip("+").partition("=")
        if sep and name == key:
            return i, value
    return None


def absolute_run_dir(overrides: list[str], base: str, now: str) -> tuple[list[str], str]:
    """The overrides with `trainer.run_dir` absolute (against `base`), and that folder."""
    overrides = list(overrides)
    found = _override(overrides, "trainer.run_dir")
    if found is None:
        experiment = (_override(overrides, "experiment") or (0, "custom"))[1]
        run_dir = os.path.join(base, "runs", f"{experiment}-{now}")
        overrides.append(f"trainer.run_dir={run_dir}")
    else:
        i, value = found
        run_dir = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        overrides[i] = f"trainer.run_dir={run_dir}"
    return overrides, run_dir


def build_job(working_dir: str, overrides: list[str], python: str, extra_env: list[str], base: str,
              now: str) -> tuple[str, dict, str]:
    """(entrypoint, runtime_env, run_dir) of the job; SubmitError on a bad argument."""
    wd = Path(working_dir).expanduser().resolve()
    if not (wd / "rlpost" / "__init__.py").is_file() or not (wd / "configs").is_dir():
        raise SubmitError(f"--working-dir {wd} is not an rlpost checkout (no rlpost/ and configs/ in it); run from "
                          "the checkout (put your reward files in it) or pass --working-dir /path/to/rlpost")
    overrides, run_dir = absolute_run_dir(overrides, base, now)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    for item in extra_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    runtime_env = {"working_dir": str(wd), "excludes": EXCLUDES, "env_vars": env}
    entrypoint = shlex.join([python, "-m", "rlpost.train", *overrides])
    return entrypoint, runtime_env, run_dir


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError, or ValueError for a malformed address
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SubmitError(f"--address {address}: no Ray dashboard answers there ({first}); start a head with "
                          "`ray start --head` (its dashboard listens on port 8265, see launch/README.md) or fix "
                          "--address / RAY_ADDRESS") from None


def _submit(client, address: str, entrypoint: str, runtime_env: dict) -> str:
    try:
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except Exception as err:  # upload too large, runtime-env errors, a cluster that went away: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SubmitError(f"the cluster at {address} did not accept the job ({type(err).__name__}: {first})") from None


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlpost-submit", description="Submit rlpost-train as a Ray job; the rest are Hydra overrides.",
        epilog="example: rlpost-submit --address http://127.0.0.1:8265 -- experiment=gsm8k_grpo_debug")
    parser.add_argument("--address", help="the head's dashboard, http://HOST:8265 (default: "
                        "$RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else http://127.0.0.1:8265)",
                        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
                        or "http://127.0.0.1:8265")
    parser.add_argument("--working-dir", default=".", help="rlpost checkout to upload (default: .)")
    parser.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env var (repeat)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for rlpost-train")
    args = parser.parse_args(argv)
    try:
        entrypoint, runtime_env, run_dir = build_job(args.working_dir, args.overrides, args.python, args.env,
                                                     os.getcwd(), time.strftime("%Y%m%d-%H%M%S"))
        client = _client(args.address)
        job_id = _submit(client, args.address, entrypoint, runtime_env)
    except SubmitError as err:
        print(f"rlpost-submit: error: {err}", file=sys.stderr)
        return 2
    print(f"rlpost-submit: job {job_id} submitted to {args.address}; run dir {run_dir}", flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        asyncio.run(_follow(client, job_id))
        while (status := client.get_job_status(job_id).value) not in TERMINAL:
            time.sleep(1)  # the log stream can end a moment before the status settles
    except KeyboardInterrupt:
        print(f"\nrlpost-submit: stopped following; job {job_id} keeps running "
              f"(`ray job stop --address {args.address} {job_id}` stops it)", file=sys.stderr)
        return 130
    print(f"rlpost-submit: job {job_id} {status}", flush=True)
    print(job_id)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
