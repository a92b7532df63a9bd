"""The run directory's life: one run at a time, earlier runs kept, stop requests, divergence.

- `OutputDirLock`: an exclusive `flock` on `<output_dir>/.lock`, taken by rank 0 for the
  whole run; the kernel releases it when the process dies, so a lock is never stale.
- `rotate_previous_run`: a fresh run (nothing to resume) in a directory that holds an earlier
  run's files moves them to `previous_runs/<n>/` instead of deleting or mixing them.
- `sweep_stale_temps`: removes the temporary checkpoint directories of DEAD processes only.
- `StopSignals`: the first SIGINT/SIGTERM asks the loop to stop after the current step (a
  checkpoint is written); a second one stops at once.
- `DivergenceGuard`: a non-finite loss or gradient stops the run loudly (optionally after
  skipping up to `max_bad_steps` such steps).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Callable, Iterator

from r2vpo_ascend.algos.errors import CheckpointError, NonFiniteError, OutputDirLockedError, TrainingDivergedError

LOCK_NAME = ".lock"
PREVIOUS_RUNS = "previous_runs"
RUN_FILES = ("metrics.jsonl", "checkpoints", "final", "tensorboard", "training_curves.png")
_TEMP = re.compile(r"^\.(?:tmp-step_\d+|latest)-(\d+)$")


# ---- the lock -----------------------------------------------------------------------------
class OutputDirLock:
    """`with OutputDirLock(dir):` — or `acquire()` / `release()`; a second holder gets
    `OutputDirLockedError` naming the process that has it."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputDirLock":
        import fcntl
        directory = self.path.parent
        if directory.exists() and not directory.is_dir():
            raise CheckpointError(f"output_dir {directory} is a file, not a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(f"cannot create output_dir {directory}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputDirLockedError(f"output_dir {directory} is in use by another run ({holder}); wait for it "
                                       "to finish or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---- earlier runs, stale temporaries ------------------------------------------------------
def rotate_previous_run(output_dir: str | Path) -> Path | None:
    """Move an earlier run's files (metrics.jsonl, checkpoints/, final/, ...) into
    `<output_dir>/previous_runs/<n>/`; returns that directory, or None when there was nothing."""
    output_dir = Path(output_dir)
    present = [output_dir / name for name in RUN_FILES if (output_dir / name).exists()]
    if not present:
        return None
    previous = output_dir / PREVIOUS_RUNS
    taken = [int(p.name) for p in previous.glob("*") if p.name.isdigit()] if previous.is_dir() else []
    target = previous / str(max(taken, default=0) + 1)
    target.mkdir(parents=True)
    for path in present:
        os.replace(path, target / path.name)
    return target


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale_temps(checkpoints: Path) -> list[Path]:
    """Remove `.tmp-step_*-<pid>` / `.latest-<pid>` left by processes that are no longer alive."""
    removed = []
    for path in checkpoints.glob(".*-*"):
        match = _TEMP.match(path.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---- stop requests ------------------------------------------------------------------------
class StopRequested(KeyboardInterrupt):
    """The run stopped at a step boundary on SIGINT/SIGTERM, after writing a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, the first SIGINT/SIGTERM sets `requested` (the loop finishes its step,
    saves and stops); a second one raises KeyboardInterrupt at once. Only installed in the
    main thread of a single-process run: under torchrun the launcher owns the signals."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            self.restore()
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping now, without a checkpoint")
        self.requested = signum
        print(f"\n[stop] {signal.Signals(signum).name}: finishing the current step, saving a checkpoint, then "
              "stopping (send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self.restore()


# ---- divergence ---------------------------------------------------------------------------
WATCHED = ("loss/policy", "grad_norm", "r2vpo/ratio_var")


class DivergenceGuard:
    """Counts RL steps whose loss, gradient norm or ratio variance is not finite (the engine
    skipped their optimiser step) and stops the run when there are more than `max_bad_steps`."""

    def __init__(self, max_bad_steps: int = 0):
        self.max_bad_steps = max_bad_steps
        self.skipped = 0

    @staticmethod
    def nonfinite(metrics: dict) -> list[str]:
        """The watched metrics of one step that are missing-as-NaN or ±inf."""
        return [k for k in WATCHED if k in metrics and isinstance(metrics[k], (int, float))
                and not math.isfinite(metrics[k])]

    def count(self, bad: bool) -> None:
        self.skipped += bool(bad)

    def check(self, step: int, bad: bool, names: list[str], *, rank: int,
              last_checkpoint: Callable[[], Path | None]) -> None:
        """After a bad step is logged: raise TrainingDivergedError once past the budget
        (`last_checkpoint` is only asked then: no directory scan on a good step)."""
        if not bad or self.skipped <= self.max_bad_steps:
            return
        last_checkpoint = last_checkpoint()
        what = ", ".join(names) or "a value on another rank"
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else \
            "no checkpoint was written before it"
        raise TrainingDivergedError(
            f"training diverged at RL step {step} (rank {rank}): {what} not finite ({self.skipped} non-finite "
            f"step(s), max_bad_steps={self.max_bad_steps}); {kept}, and no later checkpoint or final/ model was "
            "written. Lower lr (or max_grad_norm) and resume.")



@contextlib.contextmanager
def diverged_on_nonfinite(step: int, rank: int) -> Iterator[None]:
    """A NonFiniteError inside the update (e.g. V̂ reaching the dual step as NaN) stops the run
    as divergence: the update is half done, so the step cannot be skipped."""
    try:
        yield
    except NonFiniteError as e:
        raise TrainingDivergedError(f"training diverged at RL step {step} (rank {rank}) inside the update: {e}; "
                                    "no later checkpoint or final/ model was written. Lower lr and resume.") from None


def start_fresh(output_dir: str | Path) -> None:
    """A run with nothing to resume: move an earlier run's files aside, and say where."""
    moved = rotate_previous_run(output_dir)
    if moved is not None:
        print(f"[run] {output_dir} held an earlier run with no checkpoint to resume (or resume=never): its files "
              f"are now in {moved}", flush=True)


def stop_requested(signum: int | None, step: int, output_dir: str | Path) -> StopRequested:
    signum = signum or signal.SIGINT  # another rank was asked
    return StopRequested(f"stopped by {signal.Signals(signum).name} after RL step {step}; its checkpoint is in "
                         f"{Path(output_dir) / 'checkpoints'}: run the same command again to resume", signum)


def rank_failure_message(error: BaseException, rank: int, world_size: int, step: int,
                         collective_timeout_s: float) -> str:
    """What one rank prints when its step fails in a multi-process run: the others only see
    their next collective fail, so the first such message in the launcher's report is the cause."""
    return (f"[rank {rank}] step {step} failed: {type(error).__name__}: {error}\n"
            f"[rank {rank}] with {world_size} processes, one that dies or hangs makes the others' "
            f"collectives fail (after collective_timeout_s={collective_timeout_s:g} s at most); the first "
            f"failure in the launcher's report is the cause. Resume restarts from the last checkpoint.")
