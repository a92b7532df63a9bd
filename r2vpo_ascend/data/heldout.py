"""A held-out split carved from a local dataset that has none.

With a local file (or a directory whose only file serves every split) and no `eval_dataset`,
"the test split" is the training file itself: evaluating on it would score training rows.
`load_split` then cuts the file ONCE, seeded, into disjoint held-out (`eval_size` rows) and
training parts; both calls (`train` and `eval`) cut it the same way, so they never overlap.
Built-in benchmarks, directories with a file per split and Hugging Face datasets keep their
own splits.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from r2vpo_ascend.algos.errors import DataError
from r2vpo_ascend.data.loading import _file_in_directory, load_problems


def _local_file(source: str, split: str) -> Path | None:
    path = Path(source).expanduser()
    if path.is_dir():
        return _file_in_directory(path, split).resolve()
    return path.resolve() if path.is_file() else None


def shares_one_file(source: str, train_split: str, eval_split: str = "test") -> bool:
    """True when `source`'s training and evaluation splits are the same local file."""
    train = _local_file(os.fspath(source), train_split)
    return train is not None and train == _local_file(os.fspath(source), eval_split)


def carve_heldout(records: list[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out): `eval_size` rows drawn with `seed`, the rest in file order."""
    if eval_size >= len(records):
        raise DataError(f"the dataset has {len(records)} rows: holding out eval_size={eval_size} for evaluation "
                        "would leave none to train on; lower eval_size or set eval_dataset")
    held = set(random.Random(seed).sample(range(len(records)), eval_size))
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def load_split(source: str, *, split: str, train_split: str, eval_size: int, seed: int, carve: bool,
               problem_key: str, answer_key: str) -> list[dict]:
    """`split` ("train" or "eval") of `source`; carved from one shared file when `carve` and the
    source has no separate test split (see module doc)."""
    if carve and shares_one_file(source, train_split):
        train, held = carve_heldout(load_problems(source, problem_key=problem_key, answer_key=answer_key,
                                                  split=train_split), eval_size, seed)
        return train if split == "train" else held
    return load_problems(source, problem_key=problem_key, answer_key=answer_key,
                         split=train_split if split == "train" else "test",
                         limit=None if split == "train" else eval_size)
