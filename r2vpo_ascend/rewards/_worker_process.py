"""A reward worker process: its loop, its tie to the parent, and its entry point.

The pool's default start (`mp_context="subprocess"`) runs this FILE,
`python .../r2vpo_ascend/rewards/_worker_process.py SPEC`, so a worker never imports the
user's main script (multiprocessing's `spawn` and `forkserver` children re-run it, which
kills TRL-style scripts written at top level). SPEC is a JSON object: the task function and
initializer as `module:qualname`, the parent's `sys.path`, the inherited socket's file
descriptor, the parent pid and whether to ask for PR_SET_PDEATHSIG.

Standard library only, and run by path rather than with `-m`: a worker then imports just
the module of its task (for math_verify: `_math_verify_worker`, math_verify and sympy), not
this package's `__init__` and torch, so a worker killed on a timeout restarts in a fraction
of a second.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import signal
import sys
import traceback
import types
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_PERIOD_S = 1.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tie_to_parent(parent_pid: int, *, pdeathsig: bool) -> None:
    """In a worker: die with the trainer. PR_SET_PDEATHSIG makes the kernel SIGKILL us when the
    parent goes (works even while a task holds the GIL in C code); `worker_loop` checks the
    parent between tasks on other platforms and when the parent died before the prctl call.
    (Not a watchdog thread: a second thread in the worker made sympy-heavy verification about
    1.7x slower here, enough to turn slow-but-valid answers into timeouts.)"""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if not _pid_alive(parent_pid):
        os._exit(0)


def worker_loop(conn, fn: Callable, initializer: Callable | None, parent_pid: int | None = None) -> None:
    """Worker process loop: run ``initializer``, say ready, then answer ``(task_id, args)`` messages;
    while idle, exit within WATCHDOG_PERIOD_S once ``parent_pid`` is gone."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if initializer is not None:
            initializer()
    except BaseException:
        conn.send(("startup_error", None, traceback.format_exc()))
        return
    conn.send(("ready", None, None))
    while True:
        try:
            while parent_pid is not None and not conn.poll(WATCHDOG_PERIOD_S):
                if not _pid_alive(parent_pid):
                    return
            message = conn.recv()
        except (EOFError, OSError):  # the parent has gone
            return
        if message is None:
            return
        task_id, args = message
        try:
            reply = ("ok", task_id, fn(*args))
        except Exception as exc:  # a task's own error; the worker stays usable
            reply = ("error", task_id, f"{type(exc).__name__}: {exc}"[:2000])
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable return value
            conn.send(("error", task_id, f"could not send the result back: {type(exc).__name__}: {exc}"[:2000]))


def _light_packages(module_name: str) -> None:
    """Register this package's parents as bare package objects, so importing one of its
    reward modules does not run `r2vpo_ascend.rewards/__init__` (which pulls in torch)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if not module_name.startswith("r2vpo_ascend.rewards."):
        return
    for name, path in (("r2vpo_ascend", os.path.dirname(here)), ("r2vpo_ascend.rewards", here)):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            package.__spec__ = importlib.util.spec_from_loader(name, None, is_package=True)
            sys.modules[name] = package


def resolve(ref: str):
    module_name, _, qualname = ref.partition(":")
    _light_packages(module_name)
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    sys.path[:] = spec["sys_path"]  # find the task's module where the parent found it
    from multiprocessing.connection import Connection
    tie_to_parent(spec["parent_pid"], pdeathsig=spec["pdeathsig"])
    conn = Connection(spec["fd"])
    try:
        fn = resolve(spec["fn"])
        initializer = resolve(spec["initializer"]) if spec["initializer"] else None
    except BaseException:
        conn.send(("startup_error", None, traceback.format_exc()))
        return
    worker_loop(conn, fn, initializer, spec["parent_pid"])


if __name__ == "__main__":
    main(sys.argv[1:])
