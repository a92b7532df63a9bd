"""experiments/real_model_report.py on a hand-made run directory (no model, no training)."""

import json

import pytest

from experiments import real_model_report as rmr


def _write_run(root, arm, *, steps=12, reward0=0.1, reward_gain=0.05):
    run = root / arm
    run.mkdir(parents=True)
    lines = [{"step": 0, "rollouts": 0, "eval/accuracy": 0.14}]
    for s in range(1, steps + 1):
        lines.append({"step": s, "rollouts": 16 * s, "reward/mean": reward0 + reward_gain * s,
                      "reward/solved_frac": 0.0 if s <= 10 else 0.5, "reward/format_frac": s / steps,
                      "response_length/mean": 40.0 - s, "response_length/truncated_frac": 0.0,
                      "perf/time_generate_s": 10.0 + s % 2, "perf/time_update_s": 30.0, "perf/time_step_s": 41.0,
                      "perf/tokens_per_s": 12.0, "perf/max_memory_gb": 3.0 + s / 10, "r2vpo/ratio_var": 1e-3,
                      "r2vpo/lambda": 1.0 - s / 100, "clip/frac": 0.0})
    lines[-1]["eval/accuracy"] = 0.3  # the trainer writes an evaluation into its step's line
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    config = {"loss": arm, "ppo_epochs": 1, "replay_ratio": 0.5, "lr": 2e-6, "num_threads": 1, "steps": steps}
    (root / f"{arm}.log").write_text(
        f"[config] {config!r}\nstep 1 ...\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n"
        "\tMaximum resident set size (kbytes): 5242880\n")
    return run


def test_console_facts_reads_the_config_wall_time_and_peak_memory(tmp_path):
    _write_run(tmp_path, "r2vpo")
    log = tmp_path / "r2vpo.log"
    facts = rmr.console_facts(log)
    assert facts["config"]["loss"] == "r2vpo"
    assert facts["wall_s"] == pytest.approx(3723.0)
    assert facts["rss_gb"] == pytest.approx(5.0)
    # resumed once: the same command appended again; wall times add up, the peak is the larger
    with log.open("a") as f:
        f.write("[config] {'loss': 'r2vpo', 'steps': 40}\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 10:30.5\n"
                "\tMaximum resident set size (kbytes): 1048576\n")
    facts = rmr.console_facts(log)
    assert facts["config"]["steps"] == 40
    assert facts["wall_s"] == pytest.approx(3723.0 + 630.5)
    assert facts["rss_gb"] == pytest.approx(5.0)
    assert rmr.console_facts(tmp_path / "missing.log") == {"config": {}, "wall_s": None, "rss_gb": None}


def test_arm_numbers_windows_and_medians(tmp_path):
    n = rmr.arm_numbers(_write_run(tmp_path, "r2vpo", steps=12))
    assert n["steps"] == 12 and n["rollouts"] == 192
    assert n["evals"] == [(0, 0.14), (12, 0.3)]
    assert n["first"]["reward/mean"] == pytest.approx(0.1 + 0.05 * 5.5)     # steps 1..10
    assert n["last"]["reward/mean"] == pytest.approx(0.1 + 0.05 * 7.5)      # steps 3..12
    assert n["last"]["reward/solved_frac"] == pytest.approx(0.1)            # 2 of the last 10 steps at 0.5
    assert n["gen_s"] == pytest.approx(10.5) and n["update_s"] == 30.0
    assert n["peak_gb"] == pytest.approx(4.2) and n["lambda_last"] == pytest.approx(0.88)
    assert n["wall_s"] == pytest.approx(3723.0)


def test_markdown_and_doc_update_keep_the_hand_written_text(tmp_path):
    for arm, gain, steps in (("r2vpo", 0.05, 12), ("ppo_clip", 0.0, 12), ("short", 0.0, 11)):
        _write_run(tmp_path, arm, reward_gain=gain, steps=steps)
    (tmp_path / "gsm8k_base_n1.json").write_text(json.dumps({
        "n": 1, "sampling": {"max_new_tokens": 256},
        "benchmarks": {"gsm8k": {"metrics": {"avg@1": 0.02, "pass@1": 0.02, "response_length": 100.0,
                                             "truncated_frac": 0.1}, "seconds": 120.0}}}))
    figure = rmr.write_figure(tmp_path, ["r2vpo", "ppo_clip"], tmp_path / "figures" / "curves.png")
    assert figure.stat().st_size > 10_000
    text = rmr.markdown(tmp_path, ["r2vpo", "ppo_clip", "short"], figure, tmp_path / "doc.md")
    assert "| arm | step 0 | step 11 | step 12 |" in text
    assert "| `r2vpo` | 14.0% | – | 30.0% |" in text and "| `short` | 14.0% | 30.0% | – |" in text
    assert "| `base` | 2.0% | – | – |" in text          # no n=4 file: dashes, not invented numbers
    assert "loss `ppo_clip`, ppo_epochs 1, replay_ratio 0.5" in text
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\nbefore\n{rmr.BEGIN}\nold tables\n{rmr.END}\nafter\n")
    rmr.update_doc(doc, text)
    page = doc.read_text()
    assert page.startswith("# Title\nbefore\n") and page.endswith(f"{rmr.END}\nafter\n")
    assert "old tables" not in page and "| `ppo_clip` |" in page
    doc.write_text("no markers")
    with pytest.raises(SystemExit, match="add the two markers"):
        rmr.update_doc(doc, text)


def test_gsm8k_files_of_an_arm_whose_name_prefixes_another(tmp_path):
    """`gsm8k_r2vpo_n*.json` also matches arm `r2vpo_nofmt`'s `gsm8k_r2vpo_nofmt_n1.json`: each arm
    reads its own files only."""
    for arm, acc in (("r2vpo", 0.03), ("r2vpo_nofmt", 0.01)):
        (tmp_path / f"gsm8k_{arm}_n1.json").write_text(json.dumps({
            "n": 1, "sampling": {"max_new_tokens": 256},
            "benchmarks": {"gsm8k": {"metrics": {"avg@1": acc}, "seconds": 60.0}}}))
    assert rmr.gsm8k_numbers(tmp_path, "r2vpo")[1]["avg@1"] == 0.03
    assert rmr.gsm8k_numbers(tmp_path, "r2vpo_nofmt")[1]["avg@1"] == 0.01
