"""The sequence task and the sample-efficiency study's plan, caching and report (no training)."""

import json

import pytest

from experiments import sample_efficiency as se
from experiments.sample_efficiency_report import build_report
from r2vpo_ascend.data.sequence_task import make_successor_dataset
from r2vpo_ascend.models.tokenizer import build_char_tokenizer
from r2vpo_ascend.rewards import get_reward_fn
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.setup import arithmetic_split, config_reward_fn


def test_sequence_task_answers_are_16_tokens_and_graded_exactly():
    records = make_successor_dataset(50, seed=3)
    assert records == make_successor_dataset(50, seed=3)
    tok = build_char_tokenizer()
    for r in records:
        digits = [int(c) for c in r["problem"][len("next "):-1].split()]
        assert r["answer"].split() == [str((d + 1) % 10) for d in digits]
        assert len(tok(r["answer"])["input_ids"]) + 1 >= 16  # + EOS
    reward = get_reward_fn("sequence")
    scores = reward(None, ["4 0 3", " 4  0 3", "4 0", "4 0 3 1", "4 0 2", "no"], answer=["4 0 3"] * 6)
    assert scores == pytest.approx([1, 1, 2 / 3, 3 / 4, 2 / 3, 0])


def test_sequence_task_is_selectable_from_the_config_with_disjoint_splits():
    cfg = R2VPOConfig(dataset="sequence", dataset_size=100, eval_size=20, eval_split="validation")
    train, test = arithmetic_split(cfg, "train"), arithmetic_split(cfg.replace(eval_split="test"), "eval")
    val = arithmetic_split(cfg, "eval")
    assert len(train) == 100 and len(test) == len(val) == 20
    problems = [{r["problem"] for r in part} for part in (train, test, val)]
    assert not (problems[0] & problems[1]) and not (problems[0] & problems[2]) and not (problems[1] & problems[2])
    assert all(r["problem"].startswith("next ") for r in train)
    assert config_reward_fn(cfg).__name__ == "sequence"


def test_stage_a_plan_is_seed_major_and_shares_warm_starts(tmp_path):
    runs = se.build_plan("A", ["easy", "sequence"], list(se.STAGE_A_ARMS), None, 10, tmp_path)
    sft = [r for r in runs if r.kind == "sft"]
    screen = [r for r in runs if r.kind == "screen"]
    assert len(sft) == 4 and len(screen) == 2 * 2 * len(se.STAGE_A_ARMS)
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)  # seed 0 everywhere first
    for r in screen:
        assert r.deps[0].kind == "sft" and r.deps[0].task == r.task and r.deps[0].seed == r.seed
        assert r.config["model"] == str(r.deps[0].run_dir / "final") and r.config["sft_steps"] == 0
        assert {k: r.config[k] for k in se.REUSE_A} == se.REUSE_A
    spec = next(r for r in screen if r.arm == "spec")
    huber = next(r for r in screen if r.arm == "huber" and r.task == spec.task and r.seed == spec.seed)
    assert {k for k in huber.config if huber.config[k] != spec.config.get(k)} == \
        {"variance_penalty", "penalty_huber_kappa", "output_dir"}  # one remedy at a time
    assert all(R2VPOConfig.from_dict({k: v for k, v in r.config.items()}) for r in screen[:3])


def test_stage_b_grid_and_c_picks(tmp_path):
    runs = se.build_plan("B", ["easy"], ["spec", "ppo_clip"], None, 10, tmp_path)
    tune = [r for r in runs if r.kind == "tune_b"]
    assert len(tune) == 2 * len(se.LRS_B) * len(se.REUSE_B)
    assert all(r.config["eval_split"] == "validation" and r.seed == se.TUNE_SEED for r in tune)
    with pytest.raises(SystemExit, match="stage B"):
        se.main(["--stage", "C", "--arms", "spec", "ppo_clip", "--tasks", "easy", "--out", str(tmp_path),
                 "--report", str(tmp_path / "r.md")])
    by_name = {r.arm: r for r in tune}
    # the pick is the best mean accuracy over the run (early learning counts), not the best ending
    _fake_run(by_name["spec/lr0.0001_e2_r0.5"].run_dir, [0.2, 0.6, 0.6, 0.6], done=True)   # score 0.6, gain 0.4
    _fake_run(by_name["spec/lr0.0003_e4_r0.5"].run_dir, [0.2, 0.3, 0.3, 0.7], done=True)   # score 0.43, ends higher
    _fake_run(by_name["spec/lr0.0003_e1_r0"].run_dir, [0.2, 0.9, 0.9, 0.9])                # unfinished: ignored
    _fake_run(by_name["ppo_clip/lr0.0003_e1_r0.75"].run_dir, [0.2, 0.3, 0.4, 0.4], done=True)
    assert se.stage_b_picks(tmp_path, "easy", ["spec", "ppo_clip"]) == {
        "spec": {"ppo_epochs": 2, "replay_ratio": 0.5, "lr": 1e-4},
        "ppo_clip": {"ppo_epochs": 1, "replay_ratio": 0.75, "lr": 3e-4}}
    assert se.stage_b_target_gain(tmp_path, "easy", ["spec", "ppo_clip"]) == pytest.approx(0.4 / 2)
    assert se.main(["--stage", "C", "--arms", "spec", "ppo_clip", "--tasks", "easy", "--out", str(tmp_path),
                    "--report", str(tmp_path / "r.md"), "--dry-run"]) == 0
    final = {r.arm: r.config for r in se.build_plan(
        "C", ["easy"], ["spec", "ppo_clip", "clip_higher", "gspo"], 1, 10, tmp_path,
        {"easy": dict(se.stage_b_picks(tmp_path, "easy", ["spec", "ppo_clip"]),
                      clip_higher={"lr": 3e-4, "ppo_epochs": 1, "replay_ratio": 0.75})})
        if r.kind == "final"}
    assert final["spec"]["lr"] == 1e-4 and final["spec"]["ppo_epochs"] == 2 and final["spec"]["eval_split"] == "test"
    assert final["clip_higher"]["replay_ratio"] == 0.75 and final["clip_higher"]["loss"] == "clip_higher"
    # stage C's target gain is fixed when stage C is first planned: a later stage-B result does not move it
    plan_c = tmp_path / "plan_C.json"
    se.write_plan(tmp_path, "C", [], "cmd", {"target_gain": {"easy": 0.25}})
    se.write_plan(tmp_path, "C", [], "cmd", {"target_gain": {"easy": 0.4}})
    assert json.loads(plan_c.read_text())["setting"]["target_gain"] == {"easy": 0.25}


def _fake_run(run_dir, accs, ratio_max=2.0, done=False):
    run_dir.mkdir(parents=True, exist_ok=True)
    if done:
        (run_dir / "done.json").write_text(json.dumps({"rc": 0}))
    rows = [{"step": 0, "rollouts": 0, "eval/accuracy": accs[0]}]
    for i, a in enumerate(accs[1:], 1):
        rows.append({"step": i, "rollouts": 100 * i, "eval/accuracy": a, "grad/top1pct_share": 0.1 * i,
                     "r2vpo/lambda_max_change": float(i), "r2vpo/ratio_max": ratio_max})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_report_from_finished_runs_lists_missing_ones_and_runs_are_cached(tmp_path):
    runs = se.build_plan("A", ["easy"], ["spec", "ppo_clip"], 1, 10, tmp_path)
    spec = next(r for r in runs if r.arm == "spec")
    _fake_run(spec.run_dir, [0.2, 0.1, 0.15, 0.18])  # below its warm start: collapsed
    (spec.run_dir / "done.json").write_text(json.dumps({"rc": 0}))
    ppo = next(r for r in runs if r.arm == "ppo_clip")
    _fake_run(ppo.run_dir, [0.2, 0.3])  # in progress (no done.json): not counted
    se.write_plan(tmp_path, "A", runs, "cmd")
    summary = build_report(tmp_path, tmp_path / "report.md")
    cell = summary["A"]["tasks"]["easy"]
    assert cell["spec"]["collapsed"] == 1 and cell["ppo_clip"]["missing"] == [0]
    # a later command planning another task keeps the earlier rows
    se.write_plan(tmp_path, "A", se.build_plan("A", ["sequence"], ["spec"], 1, 10, tmp_path), "cmd2")
    rows = json.loads((tmp_path / "plan_A.json").read_text())["runs"]
    assert {r["task"] for r in rows} == {"easy", "sequence"}
    text = (tmp_path / "report.md").read_text()
    assert "`ppo_clip` seeds [0]" in text and "| `spec`" in text
    (tmp_path / "report.md").write_text(text + "my diagnosis\n")
    build_report(tmp_path, tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text().endswith("my diagnosis\n")  # hand-written part kept
    # a finished run with the same config is skipped by execute_run (the paper-claims cache)
    from experiments.launch import _config_hash
    from experiments.paper_claims import execute_run
    (spec.run_dir / "done.json").write_text(json.dumps({"config_hash": _config_hash(spec.config), "rc": 0}))
    assert execute_run(None, spec, in_process=True, keep_models=False).status == "cached"


def test_dry_run_prints_a_cost_estimate(tmp_path, capsys):
    assert se.main(["--stage", "A", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "36 RL runs" in out and "estimated" in out and not any(tmp_path.iterdir())


def test_report_only_leaves_the_stages_plans_as_they_ran(tmp_path):
    se.write_plan(tmp_path, "A", se.build_plan("A", ["easy"], ["spec"], 1, 10, tmp_path), "the stage's command")
    before = (tmp_path / "plan_A.json").read_text()
    assert se.main(["--stage", "A", "--arms", "spec", "ppo_clip", "--report-only", "--out", str(tmp_path),
                    "--report", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "plan_A.json").read_text() == before and (tmp_path / "r.md").exists()
