"""Where metrics go: one JSON line per step (always), TensorBoard and W&B when asked, a progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any
from r2vpo_ascend.algos.errors import MissingExtraError  # noqa: F401  (re-exported)


def _clean(value: Any):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class MetricsLogger:
    """`log(step, metrics)` appends `{"step": step, **metrics}` to `<output_dir>/metrics.jsonl`.

    On resume from step k, lines of steps > k (written after that checkpoint by a run that
    was then killed) are dropped first, so the file reads as one uninterrupted run; a line
    torn by the kill is dropped with them. The logger never deletes the file: a fresh run in
    a directory holding an earlier run's metrics finds them moved aside first
    (`run_dir.rotate_previous_run`); without that, new lines are appended.
    """

    def __init__(self, output_dir: str | Path, *, report_to=("jsonl",), config: dict | None = None,
                 resume_step: int | None = None, total_steps: int | None = None, progress_bar: str = "auto",
                 wandb_project: str = "r2vpo-ascend", enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = self._wandb = self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(r) for r in _parse_lines(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)  # atomic: a kill here leaves the old or the new file, never half
        self._file = open(self.path, "a", encoding="utf-8")
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise MissingExtraError("report_to has `tensorboard` but it is not installed: "
                                        "pip install 'r2vpo-ascend[tracking]'") from e
            self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as e:
                raise MissingExtraError("report_to has `wandb` but it is not installed: "
                                        "pip install 'r2vpo-ascend[tracking]'") from e
            self._wandb = wandb.init(project=wandb_project, config=config, dir=str(output_dir), resume="allow")
        show = progress_bar == "on" or (progress_bar == "auto" and sys.stderr.isatty())
        if show and total_steps:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=resume_step or 0, desc="r2vpo", unit="step")

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._bar is not None and "reward/mean" in record:
            self._bar.n = step
            self._bar.set_postfix({k: f"{record[k]:.3g}" for k in ("reward/mean", "r2vpo/lambda") if
                                   isinstance(record.get(k), (int, float))}, refresh=True)
        return record

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._bar is not None:
            self._bar.close()


def _parse_lines(path: Path) -> list[dict]:
    """Every JSON line of `path`; a torn LAST line (a process killed mid-write) is skipped
    with a warning, a bad line elsewhere is an error naming it."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                print(f"[metrics] warning: {path}: skipping the torn last line {number} (a run killed mid-write)",
                      file=sys.stderr, flush=True)
                continue
            raise ValueError(f"{path}: line {number} is not valid JSON: {line[:80]!r}") from None
    return records


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: is it a run's output_dir?")
    return _parse_lines(path)


def summary_line(record: dict) -> str:
    """The one-line progress summary the trainer prints every `log_every` steps."""
    keys = [("reward/mean", "reward"), ("eval/accuracy", "eval_acc"), ("r2vpo/lambda", "λ"),
            ("r2vpo/ratio_var", "V̂"), ("replay/ess_frac", "ess"), ("response_length/mean", "len"),
            ("perf/time_step_s", "s/step")]
    parts = [f"step {record['step']}"]
    parts += [f"{short} {record[k]:.4g}" for k, short in keys if isinstance(record.get(k), (int, float))]
    return " | ".join(parts)
