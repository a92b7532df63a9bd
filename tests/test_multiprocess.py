"""Multi-process correctness with real processes (gloo, 2 ranks, the native engine).

1-3: one spawn runs processes 0 and 1 as a 2-rank group and process 2 as the one-process
reference, on the same global data (a fixed batch; a scripted rollout engine whose responses
depend on the prompt only). The 2-rank update must equal the 1-process update on the whole
batch: loss, V̂, λ, ratio metrics, weights. 4-5: `torchrun` jobs: a rank that dies or hangs
fails the job in bounded time, and a 2-process run resumes from its checkpoint exactly.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import _mp_helpers as helpers

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    """{0, 1: the two ranks, 2: the single process} → what each saw (see _mp_helpers)."""
    out = tmp_path_factory.mktemp("equivalence")
    mp.spawn(helpers.equivalence_worker, args=(helpers.free_port(), str(out)), nprocs=3, join=True)
    return {i: torch.load(out / f"proc{i}.pt", weights_only=False) for i in range(3)}


def _assert_close_params(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"parameters differ by up to {worst:.3g}"


# ---- 1. same global batch, same update -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_update_equals_one_process_on_the_global_batch(procs):
    """Uneven shares (8 + 6 samples, one empty response, fresh and stale), micro-batches of 2,
    updates_per_step=2, KL + entropy terms, clipping active; float64 weights."""
    single = procs[2]["update"]
    for rank in (0, 1):
        got = procs[rank]["update"]
        assert len(got["metrics"]) == len(single["metrics"]) == 2
        for mine, ref in zip(got["metrics"], single["metrics"]):
            assert mine.keys() == ref.keys()
            for key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), (rank, key)
        _assert_close_params(got["params"], single["params"], atol=1e-12)
    # λ moved (the dual step ran) and clipping was active (so a mean over ranks would show).
    assert single["metrics"][-1]["lambda_after"] != 1.0
    assert all(m["grad_norm"] > helpers.update_config("x").max_grad_norm for m in single["metrics"])


# ---- 2. advantages over ranks ---------------------------------------------------------------
@pytest.mark.slow
def test_group_advantages_over_two_ranks_equal_one_process(procs):
    """The trainer deals whole prompts to ranks, so a group never spans ranks; its baseline is
    taken on the gathered global rewards and equals the one-process value."""
    from r2vpo_ascend.algos import compute_advantages
    single = {(g, i): adv for g, i, _, adv in procs[2]["advantages"]}
    rewards = torch.tensor([r for *_, r, _ in procs[2]["advantages"]])
    expected = compute_advantages("grpo", rewards, helpers.trainer_config("x").num_generations)
    assert list(single.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert all(single[(1, i)] == 0.0 for i in range(4))  # an all-equal group gives exactly zero
    both = procs[0]["advantages"] + procs[1]["advantages"]
    assert {g for g, *_ in procs[0]["advantages"]}.isdisjoint({g for g, *_ in procs[1]["advantages"]})
    assert sorted((g, i) for g, i, *_ in both) == sorted(single)
    for g, i, _, adv in both:
        assert adv == pytest.approx(single[(g, i)], abs=1e-6)


# ---- 3. replay buffer and the trainer loop ------------------------------------------------------
@pytest.mark.slow
def test_replay_buffers_are_identical_and_shares_partition_the_global_sample(procs):
    ranks, single = [procs[r]["trainer"] for r in (0, 1)], procs[2]["trainer"]
    # Every rank's buffer: same rollouts, same order, same stored advantages and behaviour log-probs.
    assert ranks[0]["buffer"] == ranks[1]["buffer"]
    assert [b[:4] for b in ranks[0]["buffer"]] == [b[:4] for b in single["buffer"]]
    for mine, ref in zip(ranks[0]["buffer"], single["buffer"]):
        assert mine[4:6] == pytest.approx(ref[4:6], abs=1e-5)
        assert mine[6] == pytest.approx(ref[6], abs=1e-4)
    # Fresh groups: whole groups per rank, disjoint.
    for step in range(3):
        g0, g1 = ranks[0]["fresh_groups"][step], ranks[1]["fresh_groups"][step]
        assert set(g0).isdisjoint(g1) and sorted(set(g0) | set(g1)) == sorted(set(single["fresh_groups"][step]))
    # Replayed shares: disjoint, together exactly the one-process replay sample (dealt round-robin).
    assert [len(s) for s in single["shares"]] == [0, 11, 11]
    for step in range(3):
        s0, s1, ref = ranks[0]["shares"][step], ranks[1]["shares"][step], single["shares"][step]
        assert set(s0).isdisjoint(s1)
        assert s0 == ref[0::2] and s1 == ref[1::2]


@pytest.mark.slow
def test_two_rank_training_equals_one_process_training(procs):
    """Same scripted global batches: per-step metrics, λ and the final weights agree. Float32
    here (the trainer's dtype), so to rounding: 6 Adam steps turn last-bit differences of
    near-zero gradients into weight differences well below 1% of one step (lr = 1e-3); the
    float64 update-phase test above is the exact check."""
    ranks, single = [procs[r]["trainer"] for r in (0, 1)], procs[2]["trainer"]
    assert ranks[0]["lambda"] == ranks[1]["lambda"] == pytest.approx(single["lambda"], rel=1e-5)
    _assert_close_params(ranks[0]["params"], ranks[1]["params"], atol=0.0)  # replicas identical
    multi_rows = helpers.metrics_by_step(Path(ranks[0]["output_dir"]), numeric_only=True)
    single_rows = helpers.metrics_by_step(Path(single["output_dir"]), numeric_only=True)
    assert sorted(multi_rows) == sorted(single_rows) == [1, 2, 3]
    for step, ref in single_rows.items():
        for key, value in ref.items():
            # replay/* diagnostics per staleness bucket and the per-token gradient split grad/*
            # are over the logging rank's share (docs/algorithms.md "Metrics")
            if (key.startswith("replay/") and key != "replay/buffer_size") or key.startswith("grad/"):
                continue
            assert multi_rows[step][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
    _assert_close_params(ranks[0]["params"], single["params"], atol=5e-5)


# ---- 4-5. torchrun jobs: a failing rank, and resume ------------------------------------------
RUN = ["model=tiny", "dataset=arithmetic", "dataset_size=64", "eval_every=0", "prompts_per_step=4",
       "num_generations=4", "max_new_tokens=4", "sft_steps=0", "lr=1e-3", "replay_ratio=0.5", "updates_per_step=2",
       "micro_batch_size=3", "save_every=2", "num_threads=1", "progress_bar=off", "log_every=1",
       "reward=python:_mp_helpers:reward_or_die"]


def torchrun(out: Path, *overrides: str, env: dict | None = None, timeout: float = 150):
    """A 2-process run of RUN + overrides in `out` → (result, start time, end time)."""
    started = time.time()
    res = helpers.torchrun([*RUN, f"output_dir={out}", *overrides],
                           env={"R2VPO_TEST_OUTPUT": str(out), **(env or {})}, timeout=timeout)
    return res, started, time.time()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    res, *_ = torchrun(out, "steps=4")
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_dead_rank_fails_the_job_quickly_and_the_run_resumes_exactly(tmp_path, straight_run):
    out = tmp_path / "run"
    res, _, ended = torchrun(out, "steps=4", "collective_timeout_s=30", env={"R2VPO_TEST_FAIL_AT_STEP": "3"})
    assert res.returncode != 0
    failed_at = float((out / "failed_at").read_text())
    assert ended - failed_at < 60, f"the job took {ended - failed_at:.0f} s to fail after rank 1 died"
    log = res.stdout + res.stderr
    assert "[test] rank 1 exits at step 3" in log
    # torchrun's failure report names the rank; its exit code is 1, or -6 when gloo's threads abort
    # the dying process on the way out ("terminate called without an active exception")
    assert "rank      : 1" in log and re.search(r"exitcode\s*: (1|-6)\b", log)
    assert (out / "checkpoints" / "step_000002" / "COMPLETE").exists()

    resumed, *_ = torchrun(out, "steps=4", "collective_timeout_s=30")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[resume] from" in resumed.stdout and "at step 2" in resumed.stdout
    a, b = helpers.metrics_by_step(straight_run, numeric_only=True), helpers.metrics_by_step(out, numeric_only=True)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):  # per-rank RNG states were restored: same samples, same updates
        assert b[step] == a[step], f"step {step} differs after resume"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_hung_rank_fails_the_job_after_the_collective_timeout(tmp_path):
    out = tmp_path / "run"
    timeout_s = 8
    res, _, ended = torchrun(out, "steps=2", "save_every=1", f"collective_timeout_s={timeout_s}",
                             env={"R2VPO_TEST_FAIL_AT_STEP": "2", "R2VPO_TEST_FAIL_MODE": "hang"})
    assert res.returncode != 0, res.stdout[-2000:]
    hung_at = float((out / "failed_at").read_text())
    assert timeout_s - 1 < ended - hung_at < timeout_s + 45, f"failed {ended - hung_at:.0f} s after rank 1 hung"
    log = res.stdout + res.stderr
    assert "[test] rank 1 hangs at step 2" in log
    assert "[rank 0] step 2 failed" in log and "collective_timeout_s=8" in log  # our note, then the cause:
    assert "Timed out" in log  # gloo's collective timeout on rank 0 ...
    assert "rank      : 0" in log.split("Root Cause")[1]  # ... which torchrun reports as the root cause
