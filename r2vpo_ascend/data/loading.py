"""Load problem sets: local JSONL / JSON / Parquet, the built-in benchmarks, or a Hugging Face dataset.

Every loader returns ``list[dict]``, each dict holding ``problem`` (str), ``answer`` (str) and
all other columns of the source record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from r2vpo_ascend.algos.errors import DataError  # noqa: F401  (re-exported)

BENCHMARK_DIR = Path(__file__).resolve().parent / "benchmarks"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")

# name -> folder under benchmarks/; each folder holds one file per split, e.g. test.jsonl.
BUILTIN_BENCHMARKS = {"gsm8k": "gsm8k", "math500": "math500", "aime24": "aime2024", "aime25": "aime2025"}
_ALIASES = {"math-500": "math500", "aime2024": "aime24", "aime2025": "aime25"}


def builtin_splits(name: str) -> list[str]:
    """Splits shipped for built-in benchmark ``name`` (e.g. ``["test", "train_sample"]`` for gsm8k)."""
    folder = BENCHMARK_DIR / BUILTIN_BENCHMARKS[_ALIASES.get(name, name)]
    return sorted(p.stem for p in folder.glob("*.jsonl"))


def builtin_path(name: str, split: str) -> Path:
    """Path of the shipped file for built-in benchmark ``name`` and ``split``."""
    key = _ALIASES.get(name, name)
    if key not in BUILTIN_BENCHMARKS:
        raise DataError(f"unknown built-in benchmark {name!r}; built-in names: {', '.join(BUILTIN_BENCHMARKS)}")
    path = BENCHMARK_DIR / BUILTIN_BENCHMARKS[key] / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(
            f"built-in benchmark {name!r} has no split {split!r}; shipped splits: "
            f"{', '.join(builtin_splits(key))} (the built-in benchmarks are evaluation sets: "
            "pass split='test')"
        )
    return path


# ---------------------------------------------------------------------------- file readers
def _read_jsonl(path: Path, limit: int | None) -> list[Any]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_number} is not valid JSON ({exc.msg}, column {exc.colno})") from exc
            if limit is not None and len(records) >= limit:
                break
    return records


def _read_json(path: Path, limit: int | None) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        first_line = text.lstrip().split("\n", 1)[0]
        try:  # many ".json" files are really JSON Lines
            json.loads(first_line)
        except json.JSONDecodeError:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
        return _read_jsonl(path, limit)
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: a JSON object of columns must have columns of equal length")
        columns = list(data)
        data = [dict(zip(columns, row)) for row in zip(*data.values())]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of records (or an object of equal-length columns), "
            f"got a JSON {type(data).__name__}"
        )
    return data[:limit] if limit is not None else data


def _read_parquet(path: Path, limit: int | None) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'r2vpo-ascend[data]'") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from exc
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _read_file(path: Path, limit: int | None) -> list[Any]:
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(DATA_SUFFIXES)}")
    try:
        return _READERS[suffix](path, limit)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc


def _file_in_directory(directory: Path, split: str) -> Path:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise DataError(f"{directory}: no {'/'.join(DATA_SUFFIXES)} file in this directory")
    for path in files:
        if path.stem == split:
            return path
    if len(files) == 1:
        return files[0]
    names = ", ".join(p.name for p in files)
    raise DataError(f"{directory}: several data files ({names}) and none is named after split {split!r}")


# ---------------------------------------------------------------------------- Hugging Face
def _load_hf(name: str, split: str, limit: int | None, hf_config: str | None) -> list[Any]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{name!r} is not a local file or directory, nor a built-in benchmark "
            f"({', '.join(BUILTIN_BENCHMARKS)}); loading it as a Hugging Face dataset needs the "
            "datasets package: pip install 'r2vpo-ascend[data]'"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, hf_config, split=split)
    except Exception as exc:
        raise DataError(
            f"could not load {name!r}: it is not a local file or directory, nor a built-in benchmark "
            f"({', '.join(BUILTIN_BENCHMARKS)}), and loading it from the Hugging Face Hub failed "
            f"(is the hub reachable? is the name right?): {type(exc).__name__}: {exc}"
        ) from exc
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()


def _looks_like_path(source: str) -> bool:
    if source.lower().endswith(DATA_SUFFIXES) or source.startswith(("/", "./", "../", "~")):
        return True
    parent = os.path.dirname(source)
    return bool(parent) and os.path.isdir(parent)


# ---------------------------------------------------------------------------- records
def _normalise(records: list[Any], origin: str, problem_key: str, answer_key: str) -> list[dict]:
    if not records:
        raise DataError(f"{origin}: the dataset is empty (no records)")
    problems = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{origin}: record {index} is a {type(record).__name__}, expected a JSON object")
        for key in (problem_key, answer_key):
            if key not in record:
                present = ", ".join(sorted(map(str, record))) or "none"
                raise DataError(f"{origin}: record {index} has no {key!r} field; its fields are: {present}")
        problem, answer = record[problem_key], record[answer_key]
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{origin}: record {index}: {problem_key!r} must be a non-empty string, got {problem!r}")
        if answer is None or isinstance(answer, (dict, list)) or not str(answer).strip():
            raise DataError(f"{origin}: record {index}: {answer_key!r} must be a non-empty value, got {answer!r}")
        row = {k: v for k, v in record.items() if k not in (problem_key, answer_key)}
        row["problem"], row["answer"] = problem, str(answer).strip()
        problems.append(row)
    return problems


def load_problems(
    source: str | os.PathLike,
    *,
    problem_key: str = "problem",
    answer_key: str = "answer",
    split: str = "train",
    limit: int | None = None,
    hf_config: str | None = None,
) -> list[dict]:
    """Load problems as ``[{"problem": str, "answer": str, **other_columns}, ...]``.

    ``source`` is, in this order of precedence:
      1. a ``.jsonl`` / ``.json`` / ``.parquet`` file;
      2. a directory: its file named ``<split>.<ext>``, or its only data file;
      3. a built-in benchmark name: ``gsm8k`` (splits ``test``, ``train_sample``),
         ``math500``, ``aime24``, ``aime25`` (split ``test``), shipped with the package;
      4. a Hugging Face dataset name (``datasets.load_dataset(source, hf_config, split=split)``).

    ``problem_key`` / ``answer_key`` name the source columns that become ``problem`` / ``answer``
    (the original keys are not repeated). ``answer`` is converted to ``str``. ``limit`` keeps
    the first ``limit`` records. Raises ``DataError`` (a ``ValueError``) naming the file and
    field for a missing or unreadable file, bad JSON (with its line number), a missing column
    (listing those present) or an empty dataset.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    source_str = os.fspath(source)
    path = Path(source_str).expanduser()
    if path.is_dir():
        path = _file_in_directory(path, split)
    if path.is_file():
        records, origin = _read_file(path, limit), str(path)
    elif _ALIASES.get(source_str, source_str) in BUILTIN_BENCHMARKS:
        builtin = builtin_path(source_str, split)
        records, origin = _read_file(builtin, limit), f"built-in {source_str!r} ({builtin})"
    elif isinstance(source, os.PathLike) or _looks_like_path(source_str):
        raise DataError(f"{source_str}: no such file or directory")
    else:
        records, origin = _load_hf(source_str, split, limit, hf_config), f"Hugging Face dataset {source_str!r}"
    return _normalise(records, origin, problem_key, answer_key)
