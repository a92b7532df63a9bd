"""An endless, resumable iterator over batches of prompt records."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class PromptSampler:
    """Yield batches (lists) of records forever, reshuffling at every epoch.

    The order of epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed, e])``,
    so it depends only on ``(seed, epoch)``: ``state_dict()`` = ``{epoch, position, seed}``
    is enough to resume, and after ``load_state_dict`` the next batches are identical to
    those of an uninterrupted run.

    With ``drop_last=False`` the last batch of an epoch may be smaller than ``batch_size``;
    with ``drop_last=True`` it is skipped and every batch has ``batch_size`` records.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if len(dataset) == 0:
            raise ValueError("PromptSampler: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"PromptSampler: batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(dataset):
            raise ValueError(
                f"PromptSampler: batch_size {batch_size} > {len(dataset)} records with drop_last=True "
                "would never yield a batch"
            )
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # index of the next record in this epoch's order
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
            else:
                self._order = np.arange(len(self.dataset))
            self._order_epoch = self.epoch
        return self._order  # type: ignore[return-value]

    def __iter__(self) -> "PromptSampler":
        return self

    def __next__(self) -> list[dict]:
        size = len(self.dataset)
        remaining = size - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch += 1
            self.position = 0
        order = self._epoch_order()
        indices = order[self.position : self.position + self.batch_size]
        self.position += len(indices)
        return [self.dataset[int(i)] for i in indices]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ValueError(f"PromptSampler.load_state_dict: missing keys {sorted(missing)}")
        if not 0 <= int(state["position"]) <= len(self.dataset):
            raise ValueError(
                f"PromptSampler.load_state_dict: position {state['position']} is outside a dataset of "
                f"{len(self.dataset)} records (was the state saved with a different dataset?)"
            )
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._order_epoch = -1
