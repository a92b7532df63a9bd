"""A small process pool whose tasks each get a wall-clock limit, enforced by killing the worker.

Why not ``concurrent.futures`` or ``multiprocessing.Pool``: neither can stop one stuck task.
A verifier stuck in C code (sympy big-integer arithmetic, a regex backtracking for minutes)
ignores signals and exceptions; the only reliable stop is to kill its process. Here each
worker has its own pipe, so one worker can be killed and replaced while the others go on.

- Workers start as ``subprocess`` (default: ``python r2vpo_ascend/rewards/_worker_process.py``,
  which never imports the user's main script, so a script written at top level works), or
  with the ``spawn`` or ``forkserver`` context (whose children re-import the main script),
  never ``fork`` (forking a process that runs torch threads can deadlock the child).
- Workers die with their parent: on Linux the kernel kills them when the thread that started
  them exits (``PR_SET_PDEATHSIG``, even while a task is stuck in C code), and an idle worker
  exits when the parent pid is gone (all platforms).
- Workers are created lazily, on the first ``map``; a killed worker's replacement starts at
  once, in the background, and its start-up time never counts against a task's limit.
- ``map`` may be called from any thread (calls are serialised by a lock); the parent uses no
  signals.
- ``close()``, the context manager, garbage collection and interpreter exit all shut the
  workers down (a ``weakref.finalize`` owns the process handles, not ``self``).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from r2vpo_ascend.rewards._worker_process import tie_to_parent, worker_loop

ALLOWED_CONTEXTS = ("subprocess", "spawn", "forkserver")
WORKER_SCRIPT = Path(__file__).resolve().with_name("_worker_process.py")


@dataclass(frozen=True)
class TaskResult:
    """Outcome of one task: ``status`` is ``"ok"`` (``value`` set), ``"error"`` or ``"timeout"``."""

    status: str
    value: Any = None
    error: str | None = None


def _worker_main(conn, fn: Callable, initializer: Callable | None, parent_pid: int, pdeathsig: bool) -> None:
    """Entry of a `spawn` / `forkserver` worker."""
    tie_to_parent(parent_pid, pdeathsig=pdeathsig)
    worker_loop(conn, fn, initializer, parent_pid)


def _ref(fn: Callable | None) -> str:
    """`module:qualname` of a module-level function, for a subprocess worker to import."""
    if fn is None:
        return ""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(f"{fn!r}: subprocess reward workers import their function by name; define it at the "
                         "top level of an importable module (not the main script), or use mp_context='spawn'")
    return f"{module}:{qualname}"


class _ChildProcess:
    """The `multiprocessing.Process` methods the pool uses, over a `subprocess.Popen`."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()


def _start_subprocess(fn: Callable, initializer: Callable | None, pdeathsig: bool):
    ours, theirs = socket.socketpair()
    spec = {"fn": _ref(fn), "initializer": _ref(initializer), "sys_path": sys.path, "fd": theirs.fileno(),
            "parent_pid": os.getpid(), "pdeathsig": pdeathsig}
    try:
        # Run by path, not `-m`: `-m` would first run the package's __init__ (and import torch).
        popen = subprocess.Popen([sys.executable, str(WORKER_SCRIPT), json.dumps(spec)],
                                 pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    finally:
        theirs.close()  # the child holds its own copy; closing ours lets recv() see EOF if it dies
    return _ChildProcess(popen), multiprocessing.connection.Connection(ours.detach())


class _Worker:
    STARTING, IDLE, BUSY = "starting", "idle", "busy"

    def __init__(self, mp_context: str, fn: Callable, initializer: Callable | None, startup_timeout_s: float):
        # The kernel's parent-death signal fires when the STARTING THREAD exits: only ask for it
        # from the main thread (a worker started from a short-lived thread would die with it).
        pdeathsig = threading.current_thread() is threading.main_thread()
        if mp_context == "subprocess":
            self.process, self.conn = _start_subprocess(fn, initializer, pdeathsig)
        else:
            ctx = multiprocessing.get_context(mp_context)
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            self.process = ctx.Process(target=_worker_main, args=(child_conn, fn, initializer, os.getpid(), pdeathsig
                                                                  and mp_context == "spawn"),
                                       daemon=True, name="r2vpo-reward-worker")
            self.process.start()
            child_conn.close()  # the child holds its own copy; closing ours lets recv() see EOF if it dies
            self.conn = parent_conn
        self.state = self.STARTING
        self.deadline = time.monotonic() + startup_timeout_s
        self.task_key: tuple[int, int] | None = None

    def kill(self) -> None:
        try:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5.0)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass


def _shutdown(workers: list[_Worker]) -> None:
    """Stop every worker: ask idle ones to exit, then kill whatever is left. Safe to call twice."""
    idle = [w for w in workers if w.state == _Worker.IDLE]
    for worker in idle:
        try:
            worker.conn.send(None)
        except Exception:
            pass
    deadline = time.monotonic() + 1.0
    for worker in idle:
        try:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:
            pass
    for worker in workers:  # busy or still starting ones are killed without waiting
        worker.kill()
    workers.clear()


class TimeoutProcessPool:
    """Run ``fn(*args)`` for many argument tuples in worker processes, each call limited to ``timeout_s``.

    Args:
        fn: a picklable (module-level) function; it runs in the workers.
        num_workers: number of worker processes.
        timeout_s: wall-clock limit of one call, counted from when it is handed to a worker.
            A call past it is reported as ``TaskResult("timeout")``; its worker is killed and
            replaced.
        mp_context: ``"subprocess"`` (default; never imports the main script), ``"spawn"`` or
            ``"forkserver"``.
        initializer: picklable function run once in each worker before its first task
            (e.g. heavy imports). If it raises, ``map`` raises ``RuntimeError`` with its traceback.
        startup_timeout_s: how long a worker may take to start before ``map`` gives up.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        mp_context: str = "subprocess",
        initializer: Callable | None = None,
        startup_timeout_s: float = 120.0,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if mp_context not in ALLOWED_CONTEXTS:
            raise ValueError(
                f"mp_context must be one of {ALLOWED_CONTEXTS}, got {mp_context!r} "
                "('fork' is refused: forking a process that runs torch threads can deadlock the child)"
            )
        if mp_context == "subprocess":
            _ref(fn), _ref(initializer)  # fail now, not in a worker, if they cannot be imported by name
        self.fn = fn
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.mp_context = mp_context
        self.initializer = initializer
        self.startup_timeout_s = float(startup_timeout_s)
        self.stats = {"calls": 0, "timeouts": 0, "errors": 0, "restarts": 0}
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._batch_id = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop all workers. The pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "TimeoutProcessPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the current worker processes (empty before the first ``map``)."""
        return [w.process.pid for w in self._workers]

    def _start_worker(self) -> _Worker:
        return _Worker(self.mp_context, self.fn, self.initializer, self.startup_timeout_s)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.stats["restarts"] += 1
        self._workers[self._workers.index(worker)] = self._start_worker()

    # ------------------------------------------------------------------ work
    def map(self, arg_tuples: Sequence[tuple]) -> list[TaskResult]:
        """Run ``fn(*args)`` for each tuple; results in input order. Never raises for a task's own failure."""
        with self._lock:
            if self._closed:
                raise RuntimeError("TimeoutProcessPool is closed")
            while len(self._workers) < self.num_workers:
                self._workers.append(self._start_worker())
            self._batch_id += 1
            try:
                return self._run_batch(list(arg_tuples))
            finally:
                # A worker still busy here (we are leaving on an exception) would later answer a
                # task nobody waits for: kill it; its replacement starts on the next call.
                for worker in list(self._workers):
                    if worker.state == _Worker.BUSY:
                        worker.kill()
                        self._workers.remove(worker)

    def _run_batch(self, arg_tuples: list[tuple]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(arg_tuples)
        pending = deque(range(len(arg_tuples)))
        startup_failures = 0
        while pending or any(w.state == _Worker.BUSY for w in self._workers):
            for worker in list(self._workers):
                if worker.state == _Worker.IDLE and pending:
                    index = pending.popleft()
                    try:
                        worker.conn.send(((self._batch_id, index), arg_tuples[index]))
                    except (OSError, ValueError):  # died while idle: retry the task elsewhere
                        pending.appendleft(index)
                        self._replace(worker)
                        continue
                    worker.state, worker.task_key = _Worker.BUSY, (self._batch_id, index)
                    worker.deadline = time.monotonic() + self.timeout_s
                    self.stats["calls"] += 1

            waiting = [w for w in self._workers if w.state in (_Worker.BUSY, _Worker.STARTING)]
            wait_s = max(0.0, min(w.deadline for w in waiting) - time.monotonic()) if waiting else 0.0
            ready = multiprocessing.connection.wait([w.conn for w in waiting], timeout=wait_s)
            for conn in ready:
                worker = next(w for w in self._workers if w.conn is conn)
                try:
                    kind, task_key, payload = conn.recv()
                except (EOFError, OSError):  # the worker process died (segfault, OOM kill, ...)
                    if worker.state == _Worker.BUSY:
                        results[worker.task_key[1]] = TaskResult("error", error="worker process died")
                        self.stats["errors"] += 1
                    else:
                        startup_failures += 1
                        if startup_failures > 3 * self.num_workers:
                            worker.process.join(timeout=1.0)
                            hint = " (see its output above)" if self.mp_context == "subprocess" else (
                                f". With the {self.mp_context!r} start method each worker re-imports the main "
                                "script: keep a script's top-level code under `if __name__ == '__main__':`, or "
                                "use mp_context='subprocess'")
                            raise RuntimeError(
                                "reward worker processes keep exiting during start-up (last exit code "
                                f"{worker.process.exitcode}){hint}."
                            )
                    self._replace(worker)
                    continue
                if kind == "startup_error":
                    worker.kill()
                    self._workers.remove(worker)  # the next call tries a fresh one
                    raise RuntimeError(f"a reward worker process failed to start:\n{payload}")
                if kind == "ready":
                    worker.state = _Worker.IDLE
                    continue
                if task_key != worker.task_key:  # not the task this worker is running: ignore
                    continue
                if kind == "ok":
                    results[task_key[1]] = TaskResult("ok", value=payload)
                else:
                    results[task_key[1]] = TaskResult("error", error=payload)
                    self.stats["errors"] += 1
                worker.state, worker.task_key = _Worker.IDLE, None

            now = time.monotonic()
            for worker in list(self._workers):
                if worker.deadline > now or worker.state == _Worker.IDLE:
                    continue
                if worker.state == _Worker.STARTING:
                    raise RuntimeError(
                        f"a reward worker process did not start within {self.startup_timeout_s:.0f} s"
                    )
                results[worker.task_key[1]] = TaskResult("timeout", error=f"no result within {self.timeout_s} s")
                self.stats["timeouts"] += 1
                self._replace(worker)
        return results  # type: ignore[return-value]
