"""`r2vpo eval`: table and JSON structure on the tiny model, the avg@n / pass@n arithmetic with a
scripted engine, the engine choice, and the trainer's evaluation sharing the same core."""

import importlib.util
import json

import pytest

from r2vpo_ascend.cli import main
from r2vpo_ascend.evaluation import generate_and_score, summarize
from r2vpo_ascend.evaluation.bench import make_engine
from r2vpo_ascend.models.tiny import build_tiny_model
from r2vpo_ascend.models.tokenizer import build_char_tokenizer
from r2vpo_ascend.rewards import ArithmeticReward
from r2vpo_ascend.rollout import Generation, SamplingConfig
from r2vpo_ascend.trainer.config import ConfigError
from r2vpo_ascend.evaluation import evaluate


def test_eval_cli_on_tiny_model_gsm8k_math500(tmp_path, capsys):
    out = tmp_path / "results.json"
    rc = main(["eval", "--model", "tiny", "--bench", "gsm8k,math500", "--limit", "4", "--n", "2",
               "--max-new-tokens", "6", "--temperature", "1.0", "--out", str(out)])
    assert rc == 0
    screen = capsys.readouterr().out
    header, columns = screen.splitlines()[0], screen.splitlines()[1]
    assert "model: tiny" in header and "engine: hf" in header and "n=2" in header
    assert columns.split()[:5] == ["bench", "verifier", "problems", "avg@2", "pass@2"]
    rows = {line.split()[0]: line.split() for line in screen.splitlines()[3:5]}
    assert set(rows) == {"gsm8k", "math500"} and rows["gsm8k"][1:3] == ["math_verify", "4"]

    results = json.loads(out.read_text())
    assert results["model"] == "tiny" and results["engine"] == "hf" and results["n"] == 2
    assert results["greedy"] is False and results["sampling"]["temperature"] == 1.0
    assert set(results["benchmarks"]) == {"gsm8k", "math500"}
    for bench in results["benchmarks"].values():
        metrics = bench["metrics"]
        assert metrics["num_problems"] == 4 and metrics["n"] == 2 and bench["verifier"] == "math_verify"
        for key in ("avg@2", "pass@2", "accuracy", "reward_mean", "truncated_frac"):
            assert 0.0 <= metrics[key] <= 1.0, key
        assert metrics["pass@2"] >= metrics["avg@2"]
        assert len(bench["records"]) == 4
        for record in bench["records"]:
            assert {"id", "problem", "answer", "prompt", "completions", "rewards", "correct"} <= set(record)
            assert len(record["completions"]) == len(record["rewards"]) == len(record["correct"]) == 2
            assert all(0 < n <= 6 for n in record["response_lengths"])


class ScriptedEngine:
    """Returns fixed completions (token ids of the given texts), whatever the prompt."""

    def __init__(self, tokenizer, texts_per_prompt):
        self.tokenizer, self.texts = tokenizer, texts_per_prompt

    def generate(self, prompts, sampling, n=1):
        return [[Generation(p, self.tokenizer(t)["input_ids"], True) for t in texts[:n]]
                for p, texts in zip(prompts, self.texts)]


def test_avg_and_pass_at_n_with_the_training_reward():
    tok = build_char_tokenizer()
    records = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}]
    engine = ScriptedEngine(tok, [["2", "2", "3", "9"], ["5", "4", "1", "1"], ["0", "0", "0", "0"]])
    scored = generate_and_score(engine, tok, records, ArithmeticReward(), sampling=SamplingConfig(4), n=4)
    assert [p.correct for p in scored] == [[True, True, False, False], [False, True, False, False], [False] * 4]
    m = summarize(scored)
    assert m["avg@4"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3) == m["accuracy"]
    assert m["pass@4"] == pytest.approx(2 / 3) and m["response_length"] == 1.0 and m["truncated_frac"] == 0.0
    # the trainer's held-out evaluation is the same computation
    metrics = evaluate(engine, tok, records, ArithmeticReward(), max_new_tokens=4, n=4)
    assert metrics["eval/accuracy"] == pytest.approx(m["avg@4"]) and metrics["eval/num_problems"] == 3


def test_engine_choice_falls_back_to_hf_and_says_why():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok)
    engine, name, note = make_engine("hf", model, tok, batch_size=8)
    assert name == "hf" and note == ""
    if importlib.util.find_spec("vllm") is None:
        _, name, note = make_engine("auto", model, tok, batch_size=8)
        assert name == "hf" and "vLLM is not installed" in note
        with pytest.raises(ConfigError, match="--engine vllm"):
            make_engine("vllm", model, tok, batch_size=8)


def test_eval_cli_user_errors_are_one_line(capsys):
    assert main(["eval", "--model", "tiny", "--bench", "no_such_bench.jsonl", "--limit", "2"]) == 2
    assert "no_such_bench.jsonl" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny", "--bench", "gsm8k", "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err


def test_eval_arguments_reach_the_settings():
    from r2vpo_ascend.cli import build_parser
    from r2vpo_ascend.eval_command import settings_from_args
    args = build_parser().parse_args(["eval", "--model", "m", "--bench", "gsm8k, aime24", "--n", "16",
                                      "--vllm-arg", "gpu_memory_utilization=0.8", "--vllm-arg", "enforce_eager=true"])
    settings = settings_from_args(args)
    assert settings.benches == ["gsm8k", "aime24"] and settings.n == 16 and settings.engine == "auto"
    assert settings.vllm_kwargs == {"gpu_memory_utilization": 0.8, "enforce_eager": True}


def test_eval_through_vllm_when_installed(tmp_path, capsys):
    """Runs where vLLM is installed (e.g. .venv-vllm from scripts/setup_vllm_cpu.sh); skipped elsewhere."""
    pytest.importorskip("vllm")
    out = tmp_path / "results.json"
    assert main(["eval", "--model", "tiny", "--bench", "arithmetic", "--limit", "4", "--n", "2",
                 "--max-new-tokens", "6", "--engine", "vllm", "--vllm-arg", "kv_cache_memory_bytes=67108864",
                 "--vllm-arg", "dtype=float32", "--out", str(out)]) == 0
    assert "engine: vllm" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["engine"] == "vllm" and results["benchmarks"]["arithmetic"]["metrics"]["num_problems"] == 4


def test_evaluation_sits_below_the_trainer():
    """evaluation/ imports nothing from trainer/ or engines/ (docs/architecture.md); `r2vpo eval
    --bench arithmetic` scores the held-out split of a default run (ArithmeticSplits' defaults
    are R2VPOConfig's)."""
    import ast
    import pathlib
    import r2vpo_ascend.evaluation as evaluation
    from r2vpo_ascend.data import ArithmeticSplits
    from r2vpo_ascend.trainer.config import R2VPOConfig
    from r2vpo_ascend.trainer.setup import arithmetic_splits
    for path in pathlib.Path(evaluation.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith(("r2vpo_ascend.trainer", "r2vpo_ascend.engines")) for n in names), path
    assert arithmetic_splits(R2VPOConfig()) == ArithmeticSplits()


def test_a_short_answer_from_the_engine_is_a_rollout_error():
    from r2vpo_ascend.rollout import RolloutError
    tok = build_char_tokenizer()
    engine = ScriptedEngine(tok, [["2"]])  # one completion where two were asked for
    with pytest.raises(RolloutError, match="expected 2 for each of 1 prompts"):
        generate_and_score(engine, tok, [{"prompt": "1+1=", "answer": "2"}], ArithmeticReward(),
                           sampling=SamplingConfig(4), n=2)
