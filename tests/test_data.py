"""Data: loading (files, directories, built-in benchmarks, Hugging Face), prompts, built-in tasks, the sampler."""

from __future__ import annotations

import json
import sys
import types

import pytest

from r2vpo_ascend.data import (
    ARITHMETIC_TEMPLATE,
    MATH_TEMPLATE,
    DataError,
    PromptSampler,
    arithmetic_sft_pairs,
    build_prompt,
    builtin_splits,
    load_problems,
    make_arithmetic_dataset,
    make_sequence_dataset,
)
from r2vpo_ascend.rewards import ArithmeticReward

ROWS = [
    {"problem": "1+1?", "answer": "2", "level": 1},
    {"problem": "Half of 1?", "answer": "\\frac{1}{2}", "level": 2},
    {"problem": "Ten squared?", "answer": 100, "level": 3},  # a number: returned as "100"
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _expected(rows):
    return [dict(r, answer=str(r["answer"])) for r in rows]


# ------------------------------------------------------------------------------ local files
def test_load_jsonl_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert load_problems(_write_jsonl(tmp_path / "a.jsonl", ROWS)) == _expected(ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    assert load_problems(tmp_path / "b.json") == _expected(ROWS)
    columns = {key: [r[key] for r in ROWS] for key in ROWS[0]}
    (tmp_path / "c.json").write_text(json.dumps(columns))  # an object of columns
    assert load_problems(tmp_path / "c.json") == _expected(ROWS)
    _write_jsonl(tmp_path / "d.json", ROWS)  # JSON Lines under a .json name
    assert load_problems(str(tmp_path / "d.json")) == _expected(ROWS)
    rows = [dict(r, answer=str(r["answer"])) for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    assert load_problems(tmp_path / "e.parquet") == rows
    assert load_problems(tmp_path / "e.parquet", limit=2) == rows[:2]


def test_keys_remap_limit_and_blank_lines(tmp_path):
    rows = [{"question": "Q1", "final": 7, "id": "a"}, {"question": "Q2", "final": "8", "id": "b"}]
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    loaded = load_problems(path, problem_key="question", answer_key="final")
    assert loaded == [{"id": "a", "problem": "Q1", "answer": "7"}, {"id": "b", "problem": "Q2", "answer": "8"}]
    assert load_problems(path, problem_key="question", answer_key="final", limit=1) == loaded[:1]
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_problems(path, limit=0)


def test_load_directory(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    _write_jsonl(single / "whatever.jsonl", ROWS)
    assert len(load_problems(single)) == 3

    splits = tmp_path / "splits"
    splits.mkdir()
    _write_jsonl(splits / "train.jsonl", ROWS)
    _write_jsonl(splits / "test.jsonl", ROWS[:1])
    assert len(load_problems(splits)) == 3  # split="train" by default
    assert len(load_problems(splits, split="test")) == 1
    with pytest.raises(DataError, match=r"several data files \(test.jsonl, train.jsonl\) and none is named after split 'validation'"):
        load_problems(splits, split="validation")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no .jsonl/.json/.parquet file"):
        load_problems(empty)


# ------------------------------------------------------------------------------ built-in benchmarks
@pytest.mark.parametrize(
    "name, split, count",
    [
        ("gsm8k", "test", 1319),
        ("gsm8k", "train_sample", 256),
        ("math500", "test", 500),
        ("aime24", "test", 30),
        ("aime25", "test", 30),
        ("aime2025", "test", 30),  # alias
    ],
)
def test_builtin_benchmarks(name, split, count):
    problems = load_problems(name, split=split)
    assert len(problems) == count
    for record in problems:
        assert isinstance(record["problem"], str) and record["problem"].strip()
        assert isinstance(record["answer"], str) and record["answer"].strip()
        assert {"id", "source"} <= set(record)
    assert len({r["id"] for r in problems}) == count


def test_builtin_benchmark_details():
    first = load_problems("gsm8k", split="train_sample", limit=1)[0]
    assert first["answer"] == "72" and first["id"] == "gsm8k-train-00000" and "#### 72" in first["solution"]
    assert {r["level"] for r in load_problems("math500", split="test")} == {1, 2, 3, 4, 5}
    assert builtin_splits("gsm8k") == ["test", "train_sample"]
    # The built-ins are evaluation sets: asking for a training split must not silently give the test set.
    with pytest.raises(DataError, match="no split 'train'; shipped splits: test"):
        load_problems("math500")


# ------------------------------------------------------------------------------ Hugging Face
def test_hugging_face_dataset_through_datasets(monkeypatch):
    calls = []

    class FakeDataset:
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def select(self, indices):
            return FakeDataset([self.rows[i] for i in indices])

        def to_list(self):
            return list(self.rows)

    def load_dataset(name, config=None, *, split):
        calls.append((name, config, split))
        return FakeDataset([{"question": "Q", "answer": "1"}, {"question": "R", "answer": "2"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rows = load_problems("someone/gsm-like", problem_key="question", split="test", limit=1, hf_config="main")
    assert rows == [{"problem": "Q", "answer": "1"}]
    assert calls == [("someone/gsm-like", "main", "test")]


def test_hugging_face_unreachable_or_not_installed(monkeypatch):
    def load_dataset(name, config=None, *, split):
        raise ConnectionError("Couldn't reach 'someone/ds' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match="not a local file.*Hugging Face Hub failed.*ConnectionError"):
        load_problems("someone/ds")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r"pip install 'r2vpo-ascend\[data\]'"):
        load_problems("someone/ds")


# ------------------------------------------------------------------------------ errors
def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="no_such.jsonl: no such file or directory"):
        load_problems(tmp_path / "no_such.jsonl")
    with pytest.raises(DataError, match="no such file or directory"):
        load_problems("./definitely/not/here")
    with pytest.raises(DataError, match="no such file or directory"):
        load_problems("missing.parquet")


def test_unreadable_files(tmp_path):
    (tmp_path / "bad_utf8.jsonl").write_bytes(b'{"problem": "\xff\xfe", "answer": "1"}\n')
    with pytest.raises(DataError, match="bad_utf8.jsonl: cannot read file"):
        load_problems(tmp_path / "bad_utf8.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="broken.parquet: cannot read as Parquet"):
        load_problems(tmp_path / "broken.parquet")
    (tmp_path / "table.csv").write_text("problem,answer\n1+1,2\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_problems(tmp_path / "table.csv")


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n{"problem": "c", answer: 3}\n')
    with pytest.raises(DataError, match="bad.jsonl: line 3 is not valid JSON"):
        load_problems(path)
    (tmp_path / "bad.json").write_text('[{"problem": "a",\n "answer": }]')
    with pytest.raises(DataError, match="bad.json: not valid JSON .* line 2"):
        load_problems(tmp_path / "bad.json")
    (tmp_path / "scalar.json").write_text("42")
    with pytest.raises(DataError, match="expected a JSON list of records"):
        load_problems(tmp_path / "scalar.json")
    _write_jsonl(tmp_path / "list_line.jsonl", [ROWS[0], [1, 2]])
    with pytest.raises(DataError, match="record 1 is a list, expected a JSON object"):
        load_problems(tmp_path / "list_line.jsonl")


def test_missing_column_lists_the_columns_present(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"question": "Q", "answer": "1", "id": "x"}])
    with pytest.raises(DataError, match=r"q.jsonl: record 0 has no 'problem' field; its fields are: answer, id, question"):
        load_problems(path)
    with pytest.raises(DataError, match="has no 'solution' field"):
        load_problems(path, problem_key="question", answer_key="solution")
    _write_jsonl(tmp_path / "none.jsonl", [{"problem": "Q", "answer": None}])
    with pytest.raises(DataError, match="record 0: 'answer' must be a non-empty value"):
        load_problems(tmp_path / "none.jsonl")


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        load_problems(tmp_path / "empty.jsonl")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="the dataset is empty"):
        load_problems(tmp_path / "empty.json")


# ------------------------------------------------------------------------------ prompts
def _tiny_tokenizer(chat_template=None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "hello": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_plain_prompt_templates():
    assert MATH_TEMPLATE == "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    assert build_prompt(None, "What is 2+2?") == (
        "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    )
    plain = _tiny_tokenizer()
    assert build_prompt(plain, "12+7=", template=ARITHMETIC_TEMPLATE) == "12+7="
    # only {problem} is substituted; other braces are literal
    assert build_prompt(plain, "x", template="Q: {problem} {a} \\boxed{}") == "Q: x {a} \\boxed{}"
    assert build_prompt(plain, "x", system_prompt="Be brief.", template="{problem}") == "Be brief.\n\nx"
    with pytest.raises(ValueError, match=r"must contain '\{problem\}'"):
        build_prompt(plain, "x", template="no placeholder")


def test_chat_prompt_uses_the_chat_template():
    chat = _tiny_tokenizer(CHAT_TEMPLATE)
    prompt = build_prompt(chat, "What is 2+2?", system_prompt="You are a math tutor.")
    assert prompt == (
        "<|system|>You are a math tutor.<|end|>"
        "<|user|>What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}.<|end|>"
        "<|assistant|>"
    )
    assert build_prompt(chat, "3*3=", template="{problem}") == "<|user|>3*3=<|end|><|assistant|>"


# ------------------------------------------------------------------------------ built-in tasks
def test_arithmetic_dataset_is_correct_and_deterministic():
    data = make_arithmetic_dataset(200, seed=3)
    assert data == make_arithmetic_dataset(200, seed=3)
    assert data != make_arithmetic_dataset(200, seed=4)
    assert len({r["id"] for r in data}) == 200
    for record in data:
        expression = record["problem"]
        assert expression.endswith("=") and expression.count("+") + expression.count("-") == 1
        assert str(eval(expression[:-1])) == record["answer"]  # generated digits and + - only
        for operand in expression[:-1].replace("-", "+").split("+"):
            assert 1 <= len(operand) <= 2

    hard = make_arithmetic_dataset(100, seed=0, min_digits=3, max_digits=3, ops=("+", "-", "*"), num_terms=4)
    for record in hard:
        assert str(eval(record["problem"][:-1])) == record["answer"]  # * binds tighter, as in Python
        assert len(record["problem"]) == 4 * 3 + 3 + 1
    with pytest.raises(ValueError, match="ops must be"):
        make_arithmetic_dataset(1, seed=0, ops=("/",))
    with pytest.raises(ValueError, match="min_digits"):
        make_arithmetic_dataset(1, seed=0, min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="num_terms"):
        make_arithmetic_dataset(1, seed=0, num_terms=1)


def test_sequence_dataset_and_sft_pairs():
    multi = make_sequence_dataset(50, seed=1)
    assert multi == make_sequence_dataset(50, seed=1)
    for record in multi:
        assert record["task"] == "multi_step" and record["problem"].count("*") == 1
        assert str(eval(record["problem"][:-1])) == record["answer"]
    reverse = make_sequence_dataset(50, seed=1, task="reverse", length=5)
    for record in reverse:
        digits = record["problem"][len("reverse ") : -1]
        assert len(digits) == 5 and record["answer"] == digits[::-1] and record["answer"][0] != "0"
    with pytest.raises(ValueError, match="unknown sequence task"):
        make_sequence_dataset(1, seed=0, task="sort")

    data = make_arithmetic_dataset(5, seed=0) + reverse[:5]
    pairs = arithmetic_sft_pairs(data)
    assert pairs == [(r["problem"], r["answer"]) for r in data]
    # the SFT targets are exactly what the arithmetic reward accepts
    rewards = ArithmeticReward()(None, [c for _, c in pairs], answer=[r["answer"] for r in data])
    assert rewards == [1.0] * len(data)
    assert arithmetic_sft_pairs(data[:1], template="Q: {problem}")[0][0] == "Q: " + data[0]["problem"]


# ------------------------------------------------------------------------------ sampler
def _ids(batch):
    return [r["id"] for r in batch]


def test_sampler_epochs_cover_the_data_and_are_deterministic():
    data = [{"id": i} for i in range(10)]
    sampler = PromptSampler(data, 4, seed=0)
    assert sampler.batches_per_epoch == 3
    batches = [_ids(next(sampler)) for _ in range(6)]  # two epochs: 4 + 4 + 2 each
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    epoch0, epoch1 = sum(batches[:3], []), sum(batches[3:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # reshuffled each epoch
    again = PromptSampler(data, 4, seed=0)
    assert [_ids(next(again)) for _ in range(6)] == batches
    other = PromptSampler(data, 4, seed=1)
    assert [_ids(next(other)) for _ in range(6)] != batches

    in_order = PromptSampler(data, 4, seed=0, shuffle=False, drop_last=True)
    assert [_ids(next(in_order)) for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="empty"):
        PromptSampler([], 2, seed=0)
    with pytest.raises(ValueError, match="never yield"):
        PromptSampler(data, 11, seed=0, drop_last=True)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("stop_after", [1, 2, 3, 5])  # mid-epoch and exactly at an epoch boundary
def test_sampler_resume_gives_identical_batches(drop_last, stop_after):
    data = [{"id": i} for i in range(7)]
    reference = PromptSampler(data, 3, seed=42, drop_last=drop_last)
    expected = [_ids(next(reference)) for _ in range(12)]

    first = PromptSampler(data, 3, seed=42, drop_last=drop_last)
    seen = [_ids(next(first)) for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict()))  # as it would go through a checkpoint
    assert set(state) == {"epoch", "position", "seed"}

    resumed = PromptSampler(data, 3, seed=0, drop_last=drop_last)  # the seed comes from the state
    resumed.load_state_dict(state)
    seen += [_ids(next(resumed)) for _ in range(12 - stop_after)]
    assert seen == expected


def test_sampler_rejects_a_state_from_other_data():
    sampler = PromptSampler([{"id": i} for i in range(3)], 2, seed=0)
    with pytest.raises(ValueError, match="position 9 is outside a dataset of 3 records"):
        sampler.load_state_dict({"epoch": 0, "position": 9, "seed": 0})
    with pytest.raises(ValueError, match="missing keys"):
        sampler.load_state_dict({"epoch": 0})


def test_training_problems_exclude_the_test_slice_even_without_evaluation():
    from r2vpo_ascend.trainer.config import R2VPOConfig
    from r2vpo_ascend.trainer.setup import arithmetic_split
    common = dict(model="tiny", dataset="arithmetic", dataset_size=200, eval_size=50, data_seed=3)
    evaluating, silent = R2VPOConfig(**common, eval_every=10), R2VPOConfig(**common, eval_every=0)
    test = {r["problem"] for r in arithmetic_split(evaluating, "eval")}
    train = [r["problem"] for r in arithmetic_split(silent, "train")]
    assert train == [r["problem"] for r in arithmetic_split(evaluating, "train")]  # the same pool either way
    assert len(test) == 50 and not test & set(train)
