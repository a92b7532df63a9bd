"""Reward functions: math-verify in killable workers, arithmetic exact match, format, registry, validation."""

from __future__ import annotations

import gc
import math
import os
import pickle
import sys
import threading
import time

import numpy as np
import pytest
import torch

from r2vpo_ascend.rewards import (
    ArithmeticReward,
    FormatReward,
    MathVerifyReward,
    RewardError,
    TimeoutProcessPool,
    extract_final_integer,
    format_reward,
    get_reward_fn,
    last_boxed_content,
    validate_rewards,
)

# Inputs that make math-verify / sympy run for minutes (or forever) when nothing stops them.
ADVERSARIAL = {
    "power tower": "\\boxed{9^{9^{9^{9^9}}}}",
    "factorial of 10^8": "The answer is \\boxed{(10^{8})!}",
    "20k nested braces": "\\boxed{" + "{" * 20000 + "1" + "}" * 20000 + "}",
    "100k-char sum": "\\boxed{" + "1+" * 50000 + "1}",
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def math_reward():
    # 1.5 s is below math-verify's 1 s signal granularity x 2, so its own timeouts are off and
    # the process kill is what stops the adversarial inputs.
    reward = MathVerifyReward(timeout_s=1.5, num_workers=2)
    yield reward
    reward.close()


# ------------------------------------------------------------------------------ math-verify
def test_math_reward_scores_correct_wrong_and_equivalent_answers(math_reward):
    completions = [
        "Adding them gives 12, so the answer is \\boxed{12}.",  # correct boxed
        "So the answer is \\boxed{13}.",  # wrong boxed
        "Hence $x = \\boxed{0.5}$.",  # 0.5 vs \frac{1}{2}
        "We get \\boxed{\\dfrac{1}{2}}",  # \dfrac vs \frac
        "She pays 3 * 24 = 72 dollars.\n#### 72",  # GSM8K style, no box
        "The total is 71.",  # GSM8K style, wrong
        "The roots are \\boxed{(3, \\frac{\\pi}{2})}",  # tuple with LaTeX
        "I don't know.",  # no answer at all
    ]
    answers = ["12", "12", "\\frac{1}{2}", "\\frac{1}{2}", "72", "72", "\\left( 3, \\frac{\\pi}{2} \\right)", "5"]
    scores = math_reward(["p"] * len(completions), completions, answer=answers)
    assert scores == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert math_reward.last_metrics["reward/verify_calls"] == len(completions)
    assert math_reward.last_metrics["reward/verify_timeouts"] == 0
    # 5 of the 8 end in a non-empty \boxed{}: the boxed-format rate is logged even at format weight 0
    assert math_reward.last_metrics["reward/format_frac"] == pytest.approx(5 / 8)


def test_math_reward_accepts_non_string_gold_and_checks_columns(math_reward):
    assert math_reward(None, ["\\boxed{-3}", "\\boxed{3}"], answer=[-3, -3]) == [1.0, 0.0]
    assert math_reward(None, [], answer=[]) == []
    with pytest.raises(RewardError, match="'answer'.*columns passed: solution"):
        math_reward(None, ["\\boxed{1}"], solution=["1"])
    with pytest.raises(RewardError, match="2 entries for 1 completions"):
        math_reward(None, ["\\boxed{1}"], answer=["1", "2"])


def test_every_shipped_gold_answer_verifies_against_itself():
    # Guards gold-answer parsing (e.g. "\\$18.90", tuples, intervals, \\text{...}). A generous
    # per-call limit: this checks parsing, and a loaded machine must not turn a slow gold into a
    # timeout (the 1.5 s fixture is for the adversarial test below).
    from r2vpo_ascend.data import load_problems

    records = load_problems("math500", split="test") + load_problems("aime24", split="test")
    records += load_problems("aime25", split="test") + load_problems("gsm8k", split="test", limit=100)
    golds = [r["answer"] for r in records]
    reward = MathVerifyReward(timeout_s=20.0, num_workers=2)
    try:
        scores = reward(None, [f"Thus the final answer is \\boxed{{{g}}}." for g in golds], answer=golds)
        assert reward.last_metrics["reward/verify_timeouts"] == 0
    finally:
        reward.close()
    assert [g for g, s in zip(golds, scores) if s != 1.0] == []


def test_math_reward_format_weight(math_reward):
    math_reward.format_weight = 0.5
    try:
        scores = math_reward(None, ["\\boxed{4}", "\\boxed{5}", "it is 4"], answer=["4", "4", "4"])
    finally:
        math_reward.format_weight = 0.0
    assert scores == [1.5, 0.5, 1.0]


@pytest.mark.timeout(120)  # without the process kill this test would hang, not fail
def test_adversarial_completions_time_out_and_the_pool_recovers(math_reward):
    before = math_reward.stats
    completions = list(ADVERSARIAL.values()) + ["\\boxed{5}"]
    # The stuck calls are killed after 1.5 s each and the workers restarted (counted below);
    # without that kill this call would hang and the pytest timeout above would fail the test.
    scores = math_reward(None, completions, answer=["5"] * len(completions))
    assert scores == [0.0] * len(ADVERSARIAL) + [1.0]
    metrics = math_reward.last_metrics
    assert metrics["reward/verify_timeouts"] >= 3, metrics  # the tower and the factorial always hang
    assert metrics["reward/verify_restarts"] >= 3, metrics
    assert math_reward.stats["reward/verify_timeouts"] == before["reward/verify_timeouts"] + metrics[
        "reward/verify_timeouts"
    ]

    # The replaced workers grade normally.
    assert math_reward(None, ["\\boxed{7}", "\\boxed{8}", "\\boxed{9}"], answer=["7", "8", "0"]) == [1.0, 1.0, 0.0]
    assert math_reward.last_metrics["reward/verify_timeouts"] == 0


def test_math_reward_called_from_a_thread(math_reward):
    # math-verify's signal.alarm refuses non-main threads; the workers run it on their main thread.
    results, errors = [], []

    def run():
        try:
            results.append(math_reward(None, ["\\boxed{\\frac{2}{4}}", "\\boxed{3}"], answer=["0.5", "4"]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert results == [[1.0, 0.0], [1.0, 0.0]]


def test_math_reward_shutdown_close_context_manager_and_gc():
    with MathVerifyReward(timeout_s=5.0, num_workers=1) as reward:
        assert reward(None, ["\\boxed{2}"], answer=["2"]) == [1.0]
        pids = reward._pool.worker_pids
        clone = pickle.loads(pickle.dumps(reward))  # picklable; the copy starts its own workers lazily
        assert clone._pool is None and clone.timeout_s == 5.0
    assert pids and not any(_alive(pid) for pid in pids)

    reward = MathVerifyReward(timeout_s=5.0, num_workers=1)
    assert reward(None, ["\\boxed{2}"], answer=["3"]) == [0.0]
    pids = reward._pool.worker_pids
    del reward
    gc.collect()
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_worker_function_reports_math_verify_own_timeout():
    # In-process, on the main thread: math-verify's signal.alarm timeout (1 s) fires and is
    # reported as "timeout", so with timeout_s >= 2 such calls end without killing the worker.
    from r2vpo_ascend.rewards._math_verify_worker import init_worker, verify_completion

    init_worker()
    assert verify_completion("so \\boxed{\\frac{6}{4}}", "1.5", 1) == (1.0, "ok")
    assert verify_completion(ADVERSARIAL["power tower"], "5", 1) == (0.0, "timeout")  # else it would hang


# ------------------------------------------------------------------------------ the process pool
@pytest.mark.timeout(60)
def test_pool_kills_a_stuck_task_and_reports_errors():
    # time.sleep is picklable; sleep(30) stands for a verifier stuck in C code, sleep(-1) raises.
    with TimeoutProcessPool(time.sleep, num_workers=1, timeout_s=0.5) as pool:
        results = pool.map([(0,), (30,), (-1,), (0,)])  # "timeout" below: killed, not slept through
        assert [r.status for r in results] == ["ok", "timeout", "error", "ok"]
        assert "ValueError" in results[2].error
        assert pool.stats == {"calls": 4, "timeouts": 1, "errors": 1, "restarts": 1}
    with pytest.raises(RuntimeError, match="closed"):
        pool.map([(0,)])


def test_pool_survives_a_worker_that_dies():
    with TimeoutProcessPool(os._exit, num_workers=1, timeout_s=5.0) as pool:
        results = pool.map([(3,)])
        assert results[0].status == "error" and "died" in results[0].error
        assert pool.stats["restarts"] == 1


def test_pool_reports_a_failing_initializer_and_refuses_fork():
    with TimeoutProcessPool(time.sleep, num_workers=1, initializer=sys.exit) as pool:
        for _ in range(2):  # and again on the next call, with the same message
            with pytest.raises(RuntimeError, match=r"(?s)failed to start:.*SystemExit"):
                pool.map([(0,)])
    with pytest.raises(ValueError, match="fork"):
        TimeoutProcessPool(time.sleep, mp_context="fork")


# ------------------------------------------------------------------------------ arithmetic
@pytest.mark.parametrize(
    "completion, expected",
    [
        ("19", "19"),
        (" 19<eos>", "19"),
        ("12+7=19", "19"),
        ("12+7 = 19, then 3", "19"),
        ("x = -5", "-5"),
        ("5-3", "3"),
        ("I think 4, no: Answer: 21 (final)", "21"),
        ("the result is 7 and then 8", "8"),
        ("no digits here", None),
    ],
)
def test_extract_final_integer(completion, expected):
    assert extract_final_integer(completion) == expected


def test_arithmetic_reward():
    reward = ArithmeticReward()
    completions = ["19", "18", "=19", "-5", "+19", "nothing", "07"]
    answers = ["19", "19", "19", "-5", "19", "19", 7]
    assert reward(None, completions, answer=answers) == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    with pytest.raises(RewardError, match="'answer'"):
        reward(None, ["1"])


# ------------------------------------------------------------------------------ format
def test_format_reward_and_last_boxed_content():
    completions = [
        "so \\boxed{5}.",
        "so \\boxed{5",  # never closed
        "no box",
        "\\boxed{}",  # empty
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{\\{1, 2\\}}",  # escaped braces are literal
        "\\boxed{1} and finally \\boxed{2",  # the final box is broken
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert last_boxed_content("a \\boxed{1} b \\boxed{x^{2}} c") == "x^{2}"
    assert FormatReward()(None, ["\\boxed{3}"]) == [1.0]


# ------------------------------------------------------------------------------ registry
def test_registry_builds_known_names_and_user_functions(tmp_path, monkeypatch):
    assert isinstance(get_reward_fn("arithmetic"), ArithmeticReward)
    math_fn = get_reward_fn("math_verify", timeout_s=2.0, format_weight=0.1)
    assert isinstance(math_fn, MathVerifyReward) and math_fn.timeout_s == 2.0 and math_fn._pool is None
    assert math_fn.__name__ == "math_verify"

    (tmp_path / "user_rewards.py").write_text(
        "def length_reward(prompts, completions, scale=1.0, **columns):\n"
        "    return [scale * len(c) for c in completions]\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward_fn("python:user_rewards:length_reward")
    assert fn(["p"], ["abc"]) == [3]
    scaled = get_reward_fn("python:user_rewards:length_reward", scale=2.0)
    assert scaled(["p"], ["abc"]) == [6.0] and scaled.__name__ == "length_reward"
    assert isinstance(get_reward_fn("python:r2vpo_ascend.rewards.arithmetic:ArithmeticReward"), ArithmeticReward)

    with pytest.raises(ValueError, match="known names: arithmetic, format, math_verify"):
        get_reward_fn("math-verify")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        get_reward_fn("python:no_such_module_xyz:fn")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_reward_fn("python:user_rewards:missing")
    with pytest.raises(ValueError, match="not a callable"):
        get_reward_fn("python:user_rewards:NOT_CALLABLE")
    with pytest.raises(ValueError, match="python:module.path:function"):
        get_reward_fn("python:user_rewards")


# ------------------------------------------------------------------------------ validation
def test_validate_rewards_accepts_numbers_arrays_and_tensors():
    assert validate_rewards([1, 0.5, True], 3, "f") == [1.0, 0.5, 1.0]
    assert validate_rewards(np.array([0.0, 1.0], dtype=np.float32), 2, "f") == [0.0, 1.0]
    assert validate_rewards(torch.tensor([0.25]), 1, "f") == [0.25]
    assert all(type(x) is float for x in validate_rewards([np.int64(1), 2], 2, "f"))


@pytest.mark.parametrize(
    "rewards, message",
    [
        ([1.0, 0.0], "returned 2 rewards for 3 completions"),
        ([1.0, "1", 0.0], "non-number at index 1: '1'"),
        ([1.0, None, 0.0], "non-number at index 1: None"),
        ([1.0, 0.0, math.nan], "NaN at index 2"),
        ([math.inf, 0.0, 0.0], "inf at index 0"),
        ([-math.inf, 0.0, 0.0], "-inf at index 0"),
        (1.0, "must return a list of 3 numbers, got float"),
        ("abc", "must return a list"),
    ],
)
def test_validate_rewards_errors(rewards, message):
    with pytest.raises(RewardError, match=message) as info:
        validate_rewards(rewards, 3, "my_reward")
    assert "'my_reward'" in str(info.value)
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------------------ worker lifetime
def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed worker whose new parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return _alive(pid)


def test_a_top_level_script_can_use_math_verify(tmp_path):
    """A TRL-style script without `if __name__ == "__main__":`: the workers must not re-run it."""
    import subprocess
    script = tmp_path / "train_top_level.py"
    script.write_text("from r2vpo_ascend.rewards import MathVerifyReward\n"
                      "print('TOP-LEVEL CODE RAN', flush=True)\n"
                      "reward = MathVerifyReward(timeout_s=10.0, num_workers=2)\n"
                      "scores = reward(None, ['\\\\boxed{5}', '\\\\boxed{4}'], answer=['5', '5'])\n"
                      "print('SCORES', scores, flush=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SCORES [1.0, 0.0]" in out.stdout
    assert out.stdout.count("TOP-LEVEL CODE RAN") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mp_context", ["subprocess", "spawn"])
def test_workers_die_with_a_sigkilled_parent_even_mid_task(tmp_path, mp_context):
    import subprocess
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, signal, threading, time\n"
        "from r2vpo_ascend.rewards import TimeoutProcessPool\n"
        "if __name__ == '__main__':\n"
        f"    pool = TimeoutProcessPool(time.sleep, num_workers=1, timeout_s=600, mp_context={mp_context!r})\n"
        "    pool.map([(0.0,)])\n"
        "    print(*pool.worker_pids, flush=True)\n"
        "    threading.Thread(target=pool.map, args=([(600.0,)],), daemon=True).start()  # a stuck task\n"
        "    time.sleep(1.0)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == -9, out.stderr[-2000:]
    pids = [int(p) for p in out.stdout.split()]
    deadline = time.monotonic() + 15.0
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids and not any(_running(p) for p in pids), "a reward worker outlived its SIGKILLed parent"


def test_subprocess_workers_refuse_functions_of_the_main_script():
    def local(x):
        return x
    with pytest.raises(ValueError, match="import their function by name"):
        TimeoutProcessPool(local)
