"""Scalar metrics to a JSON-lines file and TensorBoard event files."""

import json
import math
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.summary import scalar

from ._files import write_atomic


class MetricsWriter:
    """Appends `{"step": s, name: value, ...}` lines to `metrics.jsonl` and writes the same
    scalars as TensorBoard events under `tensorboard/`, both in `directory`.

    Both are written and flushed in the calling thread, so a failed write (a full or
    read-only disk) raises `OSError` from `write` at once. (tensorboardX's
    `SummaryWriter` writes from a thread that dies on such an error, after which its
    next `add_scalar` blocks forever: a run whose disk filled up hung.)

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
        self._tb: EventsWriter | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in read_metrics(self.path) if line["step"] <= resume_step]
            write_atomic(self.path, "".join(json.dumps(line) + "\n" for line in kept))
        elif resume_step is None:
            write_atomic(self.path, "")
        if tensorboard:
            folder = self.path.parent / "tensorboard"
            folder.mkdir(exist_ok=True)
            self._tb = EventsWriter(os.fspath(folder / "events"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record `metrics` (names to Python floats) at `step`."""
        if not self.enabled:
            return
        values = {name: float(value) for name, value in metrics.items()}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": int(step), **values}, allow_nan=True) + "\n")
        except OSError as error:
            raise _naming(error, self.path) from error
        if self._tb is not None:
            try:
                for name, value in values.items():
                    if math.isfinite(value):
                        summary = scalar(name, value)
                        event = event_pb2.Event(  # pyright: ignore[reportAttributeAccessIssue]
                            wall_time=time.time(), step=int(step), summary=summary
                        )
                        self._tb.write_event(event)
                self._tb.flush()
            except OSError as error:
                raise _naming(error, self.path.parent / "tensorboard") from error

    def close(self) -> None:
        """Close the event file."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _naming(error: OSError, path: pathlib.Path) -> OSError:
    """`error` with the file it was writing named (a failed `write` does not name it)."""
    return OSError(error.errno, error.strerror, os.fspath(path))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a `metrics.jsonl` file, as dicts with a `"step"` key.

    A last line without its newline, cut by a process killed while appending it, is
    left out; any other line that is not JSON raises `json.JSONDecodeError`.
    """
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is '' or a cut line
    return [json.loads(line) for line in complete if line.strip()]
