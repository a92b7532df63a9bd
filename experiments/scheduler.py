"""The study's small dependency scheduler: runs each job once its dependencies have finished,
a few at a time, and estimates the wall time of a plan under a cost model.

A job is any object with `deps` (jobs), `status` (`pending`, then `done`, `cached`, `failed`
or `skipped`), `kind` (`sft` deps are hard: their failure skips the job; `tune` deps only
when all of them failed), `key` and `cost()` (estimated seconds).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait


def schedule(runs: list, jobs: int, start, on_finish=None) -> None:
    """Run `start(run)` for every run once its deps are finished, `jobs` at a time (0: here,
    one at a time), longest first among the ready ones. A run whose dependency failed is
    skipped (tuning: a failed candidate only drops that candidate)."""
    pending = list(runs)

    def ready(run):
        return all(d.status in ("done", "cached", "failed", "skipped") for d in run.deps)

    def blocked(run):
        hard = [d for d in run.deps if d.kind == "sft"]
        tune = [d for d in run.deps if d.kind == "tune"]
        return any(d.status in ("failed", "skipped") for d in hard) or \
            (tune and all(d.status in ("failed", "skipped") for d in tune))

    def take(run) -> bool:
        """Take a ready run off `pending`: True if it may start, else it is skipped (and reported)."""
        pending.remove(run)
        if blocked(run):
            run.status, run.message = "skipped", "a run it depends on failed"
            on_finish and on_finish(run)
            return False
        return True

    if jobs <= 0:
        while pending:
            run = next(r for r in pending if ready(r))
            if take(run):
                start(run)
                on_finish and on_finish(run)
        return
    with ThreadPoolExecutor(jobs) as pool:
        active = {}
        while pending or active:
            for run in sorted([r for r in pending if ready(r)], key=lambda r: -r.cost()):
                if len(active) >= jobs:
                    break
                if take(run):
                    active[pool.submit(start, run)] = run
            if not active:
                if pending and not any(ready(r) for r in pending):
                    raise RuntimeError("scheduler: runs left whose dependencies never finish")
                continue
            finished, _ = wait(active, return_when=FIRST_COMPLETED)
            for fut in finished:
                run = active.pop(fut)
                fut.result()
                on_finish and on_finish(run)


def simulate(runs: list, jobs: int) -> float:
    """Estimated wall time (s) of `runs` under their cost model, scheduled as `schedule` does."""
    lanes, clock, done = max(jobs, 1), 0.0, set()
    pending, running = list(runs), []          # running: (finish time, run)
    while pending or running:
        for run in sorted([r for r in pending if all(d.key in done for d in r.deps)], key=lambda r: -r.cost()):
            if len(running) >= lanes:
                break
            pending.remove(run)
            running.append((clock + run.cost(), run))
        if not running:
            raise RuntimeError("simulate: runs left whose dependencies never finish")
        running.sort(key=lambda item: item[0])
        clock, run = running.pop(0)
        done.add(run.key)
    return clock
