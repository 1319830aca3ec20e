"""Scalar metrics to a JSON-lines file and TensorBoard event files."""

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
from tensorboardX import SummaryWriter


class MetricsWriter:
    """Appends `{"step": s, name: value, ...}` lines to `metrics.jsonl` and writes the same
    scalars as TensorBoard events under `tensorboard/`, both in `directory`.

    Only process 0 of a multi-host run writes; on the others every method does nothing.

    **Arguments:**

    - `directory`: the run's folder.
    - `resume_step`: when resuming from the checkpoint of this step, the lines of later
      steps (written before a crash, and about to be recomputed) are dropped first, so
      the file reads like one uninterrupted run.
    - `tensorboard`: whether to write event files.
    - `enabled`: whether this process writes (default: process 0 only).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
        enabled: bool | None = None,
    ):
        if enabled is None:
            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.path = pathlib.Path(directory) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in read_metrics(self.path) if line["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        if tensorboard:
            self._tb = SummaryWriter(os.fspath(self.path.parent / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record `metrics` (names to Python floats) at `step`."""
        if not self.enabled:
            return
        values = {name: float(value) for name, value in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **values}, allow_nan=True) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, int(step))

    def close(self) -> None:
        """Flush and close the event files."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a `metrics.jsonl` file, as dicts with a `"step"` key."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
