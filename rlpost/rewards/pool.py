"""A small pool of persistent worker processes that run reward functions with a hard per-call deadline.

Why not `multiprocessing.Pool` or `concurrent.futures`: neither can stop one call that hangs. Here every
worker runs one call at a time over its own Pipe, so a call past its deadline is handled by SIGKILLing its
worker and starting a fresh one; the other calls are not affected. A worker that dies on its own (a crash in
C code, segfault, `os._exit`) is replaced the same way, and its call reports an error.

Choices:
- "spawn" start method: forking a process that holds Ray / torch / gRPC threads is unsafe (a lock held by
  another thread at fork time stays locked forever in the child), and reward actors are exactly such processes.
- The reward functions are loaded once per worker, by spec, inside the worker (functions from a file loaded by
  path can't be pickled by reference). If loading fails there, the worker still starts and answers every call
  with that error, so the caller sees the reason instead of a stream of crashes.
- `async def` functions (anything returning an awaitable) are awaited on one event loop per worker, reused
  across calls, so clients a plug-in caches at module level stay bound to a live loop.
- `map()` takes a per-call timeout and optionally a limit for the whole map (the step's batch): when that
  passes, running calls are killed and calls not yet started are reported as timed out without running.
- A fresh worker first reports "ready" (after importing the reward modules: ~0.5 s with math-verify). A call sent
  to a worker still starting gets `startup_timeout_s` for the start-up plus `timeout_s` from "ready", so a
  replacement worker's imports don't eat into the next call's time budget.
- Workers are daemonic (they die with the parent), ignore SIGINT (Ctrl-C is the parent's business), and exit
  when their pipe closes, so a SIGKILLed parent leaves no orphans.
- Memory bound (`max_memory_mb`): RLIMIT_AS, set once the reward modules are loaded, to the worker's address
  space then plus `max_memory_mb`. A limit in the kernel, unlike an RSS watchdog, can't be outrun by one quick
  large allocation; measuring from after the imports keeps the modules' own (large, mostly untouched) virtual
  reservations out of the budget. Past it an allocation fails (MemoryError, or a crash in C code): that call
  is an error and its worker is replaced, since a MemoryError can leave the plug-in's state half-built.
- Output bound (`max_output_kb`): a call's prints (sys.stdout and sys.stderr together) past the limit are
  dropped, and the first truncation in the pool writes one note. Reward actors' output ends up in the driver's
  log, where 10 MiB of prints per call made a 188 MB log in two steps. Writes straight to file descriptor 1/2
  from C code are not seen. A worker says in its reply whether it cut the call's output and the pool writes
  the note: no state is shared between processes (a shared `multiprocessing.Value` carries a named semaphore
  that the resource tracker must unlink at exit, which raced Ray's teardown and printed tracebacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import multiprocessing as mp
import os
import resource
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from rlpost.config import RewardFunctionConfig

_READY = -1  # task id of the message a worker sends once its functions are loaded
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class CallResult:
    value: Any = None
    error: str | None = None  # set when the call raised, its worker died, or it timed out
    timed_out: bool = False


class _CappedStream:
    """Passes writes through to `stream` until this call's budget of characters (shared by stdout and stderr) is
    spent; the rest is dropped and `budget["cut"]` set."""

    def __init__(self, stream: Any, budget: dict[str, int], max_chars: int):
        self._stream, self._budget, self._max = stream, budget, max_chars

    def write(self, text: str) -> int:
        left = self._max - self._budget["used"]
        self._budget["used"] += len(text)
        if len(text) <= left:
            return self._stream.write(text)
        if left > 0:
            self._stream.write(text[:left])
        self._budget["cut"] = True
        return len(text)  # to the caller all of it was written

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)


def _limit_memory(max_memory_mb: int) -> None:
    with open("/proc/self/statm") as f:
        address_space = int(f.read().split()[0]) * _PAGE
    limit = address_space + max_memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:  # an existing `ulimit -v` can only be lowered, never raised
        limit = min(limit, hard)
    # The hard limit too, so that a plug-in can't lift it again.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker_loop(conn, specs: list[RewardFunctionConfig], max_memory_mb: int = 0, max_output_kb: int = 0) -> None:
    """Answers `(task_id, fn_index, args, kwargs)` with `(task_id, ok, value_or_error, retire, output_cut)`."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before any reward module imports numpy/torch: N workers, not N * cores
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from rlpost.rewards.loader import load_reward_fn

    fns, load_error, loop = [], None, None
    try:
        fns = [load_reward_fn(spec, i) for i, spec in enumerate(specs)]
    except Exception as e:
        load_error = f"loading the reward functions in the worker failed: {type(e).__name__}: {e}"
    if max_memory_mb > 0:
        _limit_memory(max_memory_mb)
    budget = {"used": 0, "cut": False}
    if max_output_kb > 0:
        sys.stdout = _CappedStream(sys.stdout, budget, max_output_kb * 1024)
        sys.stderr = _CappedStream(sys.stderr, budget, max_output_kb * 1024)
    conn.send((_READY, True, None, False, False))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            return
        task_id, fn_index, args, kwargs = message
        if load_error is not None:
            conn.send((task_id, False, load_error, False, False))
            continue
        budget["used"], budget["cut"], retire = 0, False, False
        try:
            value = fns[fn_index](*args, **kwargs)
            if inspect.isawaitable(value):
                loop = loop or asyncio.new_event_loop()
                value = loop.run_until_complete(value)
            reply = (task_id, True, value, False)
        except MemoryError as e:
            retire = max_memory_mb > 0  # without a limit the machine ran out: a fresh worker won't fare better
            limit = f" (past reward.max_worker_memory_mb={max_memory_mb}; worker replaced)" if retire else ""
            reply = (task_id, False, f"MemoryError: {e}{limit}", retire)
        except BaseException as e:  # SystemExit too: a plug-in calling sys.exit() is an error, not a crash
            reply = (task_id, False, f"{type(e).__name__}: {e}", False)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            conn.send((*reply, budget["cut"]))
        except Exception as e:  # e.g. the result can't be pickled
            conn.send((task_id, False, f"could not send the result back: {type(e).__name__}: {e}", retire,
                       budget["cut"]))


class _Worker:
    def __init__(self, ctx, specs: list[RewardFunctionConfig], *limits):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_loop, args=(child_conn, specs, *limits), daemon=True,
                                name="rlpost-reward-worker")
        self.proc.start()
        child_conn.close()  # ours is closed so that EOF reaches us if the worker dies
        self.ready = False
        self.call: int | None = None  # index into the current map's calls
        self.task_id: int | None = None
        self.timeout_s = 0.0
        self.deadline = float("inf")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


def _death_reason(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"worker process was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"worker process died (exit code {code})"


class ProcessPool:
    """`num_workers` processes that run the functions of `specs`; `map()` runs calls on them with a deadline.
    `max_memory_mb` and `max_output_kb` bound each worker's allocations and each call's prints (0 = no bound)."""

    def __init__(self, specs: list[RewardFunctionConfig], num_workers: int, startup_timeout_s: float = 60.0,
                 max_memory_mb: int = 0, max_output_kb: int = 0):
        self.specs = list(specs)
        self.startup_timeout_s = startup_timeout_s
        self._ctx = mp.get_context("spawn")
        self._limits = (max_memory_mb, max_output_kb)
        self._output_noted = False  # the output-truncation note is written once per pool
        self._next_task_id = 0
        self._batch_deadline = float("inf")
        self._workers = [_Worker(self._ctx, self.specs, *self._limits) for _ in range(num_workers)]

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every idle worker has loaded its functions. False if one died starting, or on timeout."""
        deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
        while starting := [w for w in self._workers if not w.ready and w.call is None]:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = set(wait([w.conn for w in starting] + [w.proc.sentinel for w in starting], timeout=left))
            for w in starting:
                if w.conn in ready or w.proc.sentinel in ready:
                    with contextlib.suppress(EOFError, OSError):
                        w.ready = w.conn.poll() and w.conn.recv()[0] == _READY
                    if not w.ready:  # it died before saying ready
                        self._replace(w)
                        return False
        return True

    def map(self, calls: list[tuple[int, tuple, dict]], timeout_s: float,
            batch_timeout_s: float | None = None) -> list[CallResult]:
        """Run `(fn_index, args, kwargs)` calls in parallel; results in input order, never raises for a call.
        Each call gets `timeout_s`; all of them together get `batch_timeout_s` (None = no limit)."""
        results: list[CallResult | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        self._batch_deadline = float("inf") if batch_timeout_s is None else time.monotonic() + batch_timeout_s
        while pending or any(w.call is not None for w in self._workers):
            if pending and time.monotonic() >= self._batch_deadline:
                for index in pending:
                    results[index] = CallResult(error=f"not run: the batch limit of {batch_timeout_s:g} s passed "
                                                "before its turn", timed_out=True)
                pending.clear()
                continue
            for w in list(self._workers):
                if pending and w.call is None:
                    if not w.proc.is_alive():  # died while idle (killed from outside): start a fresh one
                        w = self._replace(w)
                    index = pending.popleft()
                    self._dispatch(w, index, calls[index], timeout_s, results)
            busy = [w for w in self._workers if w.call is not None]
            if not busy:
                continue
            left = min(w.deadline for w in busy) - time.monotonic()
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=max(0.0, left)))
            for w in busy:
                if w.conn in ready or w.proc.sentinel in ready:
                    self._collect(w, results)
            now = time.monotonic()
            for w in self._workers:
                if w.call is not None and now >= w.deadline:
                    if w.deadline == self._batch_deadline:
                        why = f"timed out: the batch limit of {batch_timeout_s:g} s passed"
                    elif w.ready:
                        why = f"timed out after {w.timeout_s:g} s"
                    else:
                        why = f"timed out after worker start-up ({self.startup_timeout_s:g} s)"
                    results[w.call] = CallResult(error=why, timed_out=True)
                    self._replace(w)
        return results  # type: ignore[return-value]

    def _dispatch(self, w: _Worker, index: int, call: tuple[int, tuple, dict], timeout_s: float, results) -> None:
        fn_index, args, kwargs = call
        self._next_task_id += 1
        try:
            w.conn.send((self._next_task_id, fn_index, args, kwargs))
        except Exception as e:  # arguments that can't be pickled, or the worker died just now
            results[index] = CallResult(error=f"could not send the call to a worker: {type(e).__name__}: {e}")
            if isinstance(e, OSError):  # a pickling error leaves the worker untouched (nothing was sent)
                self._replace(w)
            return
        w.call, w.task_id, w.timeout_s = index, self._next_task_id, timeout_s
        w.deadline = min(self._batch_deadline,
                         time.monotonic() + (timeout_s if w.ready else self.startup_timeout_s + timeout_s))

    def _collect(self, w: _Worker, results) -> None:
        """Read what `w` sent; if it died without answering, its call gets an error and `w` is replaced."""
        while w.call is not None:
            try:
                if not w.conn.poll():
                    break
                task_id, ok, value, retire, output_cut = w.conn.recv()
            except (EOFError, OSError):  # its end of the pipe closed: it is exiting; let it finish
                w.proc.join(timeout=1)
                break
            if output_cut and not self._output_noted:  # one note per pool, not one per call or worker
                self._output_noted = True
                print(f"[rlpost] a reward function printed more than reward.max_output_kb={self._limits[1]} KB in "
                      "one call; the rest of such output is dropped (this note is shown once)", file=sys.stderr,
                      flush=True)
            if task_id == _READY:
                w.ready = True
                w.deadline = min(self._batch_deadline, time.monotonic() + w.timeout_s)  # its own time starts now
            elif task_id == w.task_id:
                results[w.call] = CallResult(value=value) if ok else CallResult(error=value)
                w.call = w.task_id = None
                w.deadline = float("inf")
                if retire:  # past its memory limit: its state may be half-built
                    self._replace(w)
                    return
        if w.call is not None and not w.proc.is_alive():
            w.proc.join()
            results[w.call] = CallResult(error=_death_reason(w.proc))
            self._replace(w)

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        fresh = _Worker(self._ctx, self.specs, *self._limits)
        self._workers[self._workers.index(w)] = fresh
        return fresh

    def close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):  # already dead
                w.conn.send(None)
        for w in self._workers:
            w.proc.join(timeout=2)
            w.kill()
        self._workers = []

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
