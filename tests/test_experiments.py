"""experiments/paper_claims.py end to end at a minuscule scale, and the trainer features it relies
on: `steps: 0` (a warm start to share), `eval_split: validation`, `data_seed`."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
from r2vpo_ascend.trainer.config import ConfigError
from r2vpo_ascend.trainer.setup import arithmetic_split

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest tests` from elsewhere: the experiments package lives at the root
    sys.path.insert(0, str(ROOT))

from experiments import paper_claims  # noqa: E402

SMOKE = ["--tasks", "easy", "--arms", "ppo_clip", "r2vpo_replay", "--seeds", "1", "--jobs", "0",
         "--steps", "4", "--tune-steps", "2", "--set", "sft_steps=5", "--set", "eval_size=16",
         "--set", "dataset_size=200", "--set", "prompts_per_step=4", "--set", "num_generations=4"]


def run_harness(tmp_path, *extra):
    cmd = [sys.executable, "-m", "experiments.paper_claims", *SMOKE, "--out", str(tmp_path / "out"),
           "--report", str(tmp_path / "docs" / "results.md"), "--figures", str(tmp_path / "docs" / "figures"), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(180)
def test_paper_claims_smoke(tmp_path):
    out = run_harness(tmp_path)
    n_tune = sum(len(paper_claims.ARMS[a].grid) for a in ("ppo_clip", "r2vpo_replay"))
    n_runs = 2 + n_tune + 2  # 2 warm starts (study seed + tuning seed), every grid value of 2 arms, 2 study runs
    assert f"[done] {n_runs}/{n_runs} runs ok" in out

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] and summary["missing"] == []
    arms = summary["tasks"]["easy"]["arms"]
    assert set(arms) == {"ppo_clip", "r2vpo_replay"}
    for entry in arms.values():
        for key in ("acc0", "final", "late", "acc_at_budget", "worst_drop", "auc", "to_target"):
            assert set(entry[key]) == {"mean", "std", "n"}, key
        assert entry["runs"] == 1 and entry["rollouts"] == 4 * 4 * 4
        assert entry["curve"][0][0] == 0 and len(entry["curve"]) == 5  # step 0 + an evaluation every step
    assert arms["r2vpo_replay"]["buckets"], "replay arm: per-staleness diagnostics"
    assert arms["ppo_clip"]["eureka_zeroed"] is not None and arms["r2vpo_replay"]["eureka_zeroed"] == 0
    assert "r2vpo_replay vs ppo_clip" in summary["tasks"]["easy"]["comparisons"]
    assert set(summary["claims"]) == {"beats_clipping", "rollouts", "stale_data"}

    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    for arm in ("ppo_clip", "r2vpo_replay"):
        choice = plan["tuning"][f"easy/{arm}"]
        assert choice["tuned"] and len(choice["scores"]) == len(paper_claims.ARMS[arm].grid) == 4
        assert choice["overrides"] in choice["grid"]
    # tuning runs evaluate on validation, study runs on test; every arm loads the same warm start
    tune_cfg = (tmp_path / "out" / "tune" / "easy" / "ppo_clip" / "cand0" / "config.yaml").read_text()
    assert "eval_split: validation" in tune_cfg and "seed1000/final" in tune_cfg
    models = {(tmp_path / "out" / "runs" / "easy" / a / "seed0" / "config.yaml").read_text().split("model: ")[1]
              .splitlines()[0] for a in ("ppo_clip", "r2vpo_replay")}
    assert len(models) == 1 and "sft/easy/seed0/final" in models.pop()
    assert not (tmp_path / "out" / "runs" / "easy" / "ppo_clip" / "seed0" / "final").exists()  # models dropped

    report = (tmp_path / "docs" / "results.md").read_text()
    for heading in ("## What was compared", "## Tuning (validation slice", "## Results per task",
                    "## The claims, measured", "## \"Eureka\" tokens", "## Inside R²VPO", "## Reading the outcome"):
        assert heading in report, heading
    assert "| `ppo_clip` |" in report and "| `r2vpo_replay` |" in report
    assert "](figures/accuracy_vs_rollouts.png)" in report
    for name in ("accuracy_vs_rollouts.png", "eureka_share.png", "r2vpo_internals_easy.png"):
        assert (tmp_path / "docs" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # The report is computed from metrics.jsonl: change the runs' last evaluation, rebuild, see it.
    metrics = tmp_path / "out" / "runs" / "easy" / "ppo_clip" / "seed0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[-1]["eval/accuracy"] = 0.987654
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tmp_path / "docs" / "results.md"
    results.write_text(results.read_text() + "\nA hand-written note.\n")  # below the marker: kept
    run_harness(tmp_path, "--report-only")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tasks"]["easy"]["arms"]["ppo_clip"]["final"]["mean"] == pytest.approx(0.987654)
    assert "98.8 ± 0.0" in results.read_text() and results.read_text().count("A hand-written note.") == 1

    # Finished runs are not run again.
    out = run_harness(tmp_path)
    assert out.count(" cached ") == n_runs


def test_dry_run_plan_and_estimate(capsys):
    assert paper_claims.main(["--dry-run"]) == 0
    line = capsys.readouterr().out
    assert "36 study runs (200 steps)" in line and "48 tuning runs" in line and "8 warm starts" in line
    minutes = float(line.split("estimated wall time ")[1].split(" min")[0])
    assert 10 < minutes <= 45  # the budget for the whole study, tuning included


def _args(**kw):
    base = dict(out="/tmp/x", tasks=["easy"], arms=["ppo_clip", "r2vpo"], seeds=2, scale=1.0, threads=1, data_seed=0,
                set=[], steps=None, tune_steps=None, no_tune=False, tune_seed=1000, jobs=2)
    base.update(kw)
    return SimpleNamespace(**base)


def test_plan_shares_warm_starts_and_only_the_loss_differs():
    plan = paper_claims.build_plan(_args())
    a, b = plan.main[("easy", "ppo_clip", 1)], plan.main[("easy", "r2vpo", 1)]
    diff = {k for k in a.config if a.config[k] != b.config.get(k)}
    assert diff == {"loss", "output_dir"}
    assert a.deps[0] is b.deps[0] is plan.sft[("easy", 1)]
    assert len(plan.tuning[("easy", "r2vpo")]) == 4 and all(r.config["eval_split"] == "validation"
                                                           for r in plan.tuning[("easy", "r2vpo")])
    assert a.config["eval_split"] == "test" and a.config["data_seed"] == 0
    assert {len(arm.grid) for arm in paper_claims.ARMS.values()} == {4}  # the same tuning budget for every arm
    big = paper_claims.build_plan(_args(scale=4))
    assert big.main[("easy", "r2vpo", 0)].config["steps"] == 4 * a.config["steps"]
    assert big.main[("easy", "r2vpo", 0)].config["prompts_per_step"] == 4 * a.config["prompts_per_step"]


def test_scheduler_order_and_failures():
    plan = paper_claims.build_plan(_args(seeds=1))
    started = []

    def start(run):
        started.append(run)
        run.status = "failed" if run.kind == "tune" and run.arm == "ppo_clip" else "done"
        return run
    paper_claims.schedule(plan.all_runs(), 2, start)
    for run in started:  # nothing starts before what it depends on
        assert all(started.index(d) < started.index(run) for d in run.deps)
    # all ppo_clip tuning candidates failed: its study run is skipped; r2vpo's runs
    assert plan.main[("easy", "ppo_clip", 0)].status == "skipped"
    assert plan.main[("easy", "r2vpo", 0)].status == "done"
    # the cost model: one lane runs everything back to back; two lanes overlap the warm starts at least
    runs = plan.all_runs()
    one_lane = paper_claims.simulate(runs, 1)
    assert one_lane == pytest.approx(sum(r.cost() for r in runs))
    assert paper_claims.simulate(runs, 2) < one_lane


# ---- trainer features the harness uses ----------------------------------------------------------
def _cfg(tmp_path, **kw):
    base = dict(model="tiny", dataset="arithmetic", dataset_size=64, eval_size=16, eval_every=2, steps=2,
                prompts_per_step=4, num_generations=4, max_new_tokens=4, sft_steps=2, lr=1e-3,
                arithmetic_max_digits=1, arithmetic_terms=3, output_dir=str(tmp_path / "run"), progress_bar="off",
                log_every=0)
    base.update(kw)
    return R2VPOConfig(**base)


def test_validation_split_is_disjoint_and_leaves_train_and_test_unchanged(tmp_path):
    test_cfg = _cfg(tmp_path)
    val_cfg = _cfg(tmp_path, eval_split="validation")
    train, test = arithmetic_split(test_cfg, "train"), arithmetic_split(test_cfg, "eval")
    assert arithmetic_split(val_cfg, "train") == train
    validation = arithmetic_split(val_cfg, "eval")
    names = [{r["problem"] for r in part} for part in (train, test, validation)]
    assert [len(n) for n in names] == [64, 16, 16]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    with pytest.raises(ConfigError, match="validation"):
        arithmetic_split(_cfg(tmp_path, eval_split="validation", arithmetic_terms=2, dataset_size=30, eval_size=35,
                              arithmetic_ops=["+"], arithmetic_max_digits=1), "eval")  # only 100 distinct a+b
    with pytest.raises(ConfigError, match="eval_split"):
        _cfg(tmp_path, eval_split="validation", dataset="gsm8k")
    with pytest.raises(ConfigError, match="eval_split"):
        _cfg(tmp_path, eval_split="dev")


def test_data_seed_fixes_the_split_across_seeds(tmp_path):
    def split(**kw):
        return [r["problem"] for r in arithmetic_split(_cfg(tmp_path, **kw), "eval")]
    assert split(seed=1) != split(seed=2)                              # default: the split follows `seed`
    assert split(seed=1, data_seed=7) == split(seed=2, data_seed=7)    # fixed: the same for every seed
    assert split(seed=3, data_seed=3) == split(seed=3)


def test_steps_zero_saves_a_warm_start_that_loads_with_the_same_accuracy(tmp_path):
    warm = R2VPOTrainer(config=_cfg(tmp_path, steps=0, sft_steps=3)).train()
    assert warm.steps == 0 and (tmp_path / "run" / "final" / "config.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0]
    again = R2VPOTrainer(config=_cfg(tmp_path, model=str(tmp_path / "run" / "final"), sft_steps=0, steps=1,
                                     output_dir=str(tmp_path / "rl"))).train()
    assert again.first_eval["eval/accuracy"] == warm.first_eval["eval/accuracy"]
    with pytest.raises(ConfigError, match="steps"):
        _cfg(tmp_path, steps=-1)
