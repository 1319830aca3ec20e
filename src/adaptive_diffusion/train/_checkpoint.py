"""Checkpoints of a run with orbax: train state, data-iterator position and config.

Each checkpoint is a step directory written by an `orbax.checkpoint.CheckpointManager`
with three items: `state` (every array of the `TrainState`: model, optimizer state,
EMA, step, PRNG key, non-finite counter), `data` (the grain iterator's position, so a
resumed run reads exactly the batches it would have read) and `config` (JSON). Saves
are asynchronous: arrays are copied off the device when `save` returns and written in
the background; `close` waits for the writes to finish. orbax writes each step to a
temporary directory and renames it when complete, so a crash mid-write leaves the
previous checkpoints intact. A write that fails (a full or read-only disk, a removed
folder) raises `CheckpointWriteError` from the next `save` or from `close`, naming the
complete checkpoints on disk.
"""

import contextlib
import os
import warnings
from typing import Any

import equinox as eqx
import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jaxtyping import PyTree

from ._config import Config
from ._state import TrainState


RESUMABLE_KEYS = frozenset(
    {"log_every", "eval_every", "checkpoint_every", "max_to_keep", "mesh.data", "eval.examples"}
    | {"eval.num_samples", "eval.sampler", "eval.sample_steps", "eval.dequantization"}
    | {"eval.ode_samples", "data.path", "data.test_path"}
)
"""Config keys that may differ between a checkpoint and the run resuming it: they change
where files are, how often things happen or how the run is observed, not what is
trained."""


class ConfigMismatchError(ValueError):
    """The config of a run differs from the one its checkpoint was trained with."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written: a full or read-only disk, a removed folder.

    **Fields:** `kept`, the steps of the complete checkpoints on disk after the failure.
    """

    def __init__(self, message: str, kept: list[int]):
        super().__init__(message)
        self.kept = kept


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(arrays: PyTree) -> PyTree:
    """Typed PRNG keys as their raw `uint32` data, which orbax can store."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, arrays)


def _from_storable(stored: PyTree, like: PyTree) -> PyTree:
    def restore(s, x):
        return jax.random.wrap_key_data(s, impl=jax.random.key_impl(x)) if _is_key(x) else s

    return jax.tree.map(restore, stored, like)


def _check_finite(state: TrainState) -> None:
    arrays = eqx.filter((state.model, state.ema), eqx.is_inexact_array)
    finite = jax.tree.reduce(
        jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), arrays), True
    )
    if not bool(finite):
        raise FloatingPointError(
            f"The model at step {int(state.step)} holds NaN or infinite values; refusing to "
            "checkpoint it. Resume from the last checkpoint with a lower learning rate."
        )


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


class Checkpointer:
    """Saves and restores a run's checkpoints in `directory`.

    **Arguments:**

    - `directory`: the folder of the step directories (created if absent).
    - `config`: the run's config, stored with every checkpoint and compared with the
      stored one on restore.
    - `max_to_keep`: how many of the latest checkpoints are kept on disk.
    """

    def __init__(self, directory: str | os.PathLike, config: Config, *, max_to_keep: int):
        self.config = config
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=True,
                create=True,
                # The step's folders are made before `save` returns: made in the
                # background, a failure to make them (a read-only disk) left the
                # synchronous item (grain's position) waiting 300 s for their signal.
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            ),
        )

    def steps(self) -> list[int]:
        """The steps of the checkpoints on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def complete_steps(self) -> list[int]:
        """The steps of the complete checkpoints on disk now, read from the folder: an
        interrupted write leaves only its temporary folder, whose name is not a step."""
        try:
            entries = list(os.scandir(self.manager.directory))
        except OSError:  # the folder itself is gone
            return []
        return sorted(int(e.name) for e in entries if e.name.isdigit() and e.is_dir())

    def save(self, state: TrainState, iterator: grain.DatasetIterator | None = None) -> None:
        """Start writing a checkpoint of `state` (and the iterator's position) at its step.

        **Raises:** `FloatingPointError` if the model or its EMA is not finite: a
        non-finite model never reaches the disk.
        """
        _check_finite(state)
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(_to_storable(eqx.filter(state, eqx.is_array))),
            "config": ocp.args.JsonSave(self.config.to_dict()),
        }
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        try:
            self.manager.save(int(state.step), args=ocp.args.Composite(**items), force=True)
        except Exception as error:  # tensorstore reports a full disk as a ValueError
            raise self._write_error(error) from error

    def _write_error(self, error: Exception) -> CheckpointWriteError:
        """The failure of an asynchronous write (the one started now or an earlier one,
        whose error orbax raises at the next save or wait), with the complete checkpoints
        left on disk: orbax writes each into a temporary folder and renames it when done,
        so a step folder on disk is a complete checkpoint."""
        kept = self.complete_steps()
        return CheckpointWriteError(
            f"Writing a checkpoint to {self.manager.directory} failed ({_reason(error)})",
            kept,
        )

    def stored_config(self, step: int) -> Config:
        """The config stored with the checkpoint of `step`."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return Config.from_dict(restored["config"])

    def latest_config(self) -> Config:
        """The config stored with the latest checkpoint whose config can be read (corrupt
        ones skipped, as `restore` skips them).

        **Raises:** `FileNotFoundError` if there is none.
        """
        failures = []
        for step in reversed(self.steps()):
            try:
                return self.stored_config(step)
            except Exception as error:  # orbax and tensorstore raise many kinds
                failures.append(f"step {step}: {_reason(error)}")
        raise FileNotFoundError(self._none_readable(failures))

    def _none_readable(self, failures: list[str]) -> str:
        reasons = f" ({'; '.join(failures)})" if failures else ""
        return (
            f"No readable checkpoint in {self.manager.directory}{reasons}. Train again, or "
            "restore the folder from a copy."
        )

    def check_config(self, step: int) -> None:
        """Raise `ConfigMismatchError` if this run's config differs from the stored one in
        a key outside `RESUMABLE_KEYS`, naming each such key and both values."""
        stored = _flatten(self.stored_config(step).to_dict())
        current = _flatten(self.config.to_dict())
        diffs = [
            f"{key}: checkpoint {stored.get(key)!r}, now {current.get(key)!r}"
            for key in sorted(set(stored) | set(current))
            if key not in RESUMABLE_KEYS and stored.get(key) != current.get(key)
        ]
        if diffs:
            raise ConfigMismatchError(
                f"The checkpoint at step {step} in {self.manager.directory} was trained with "
                f"another config ({'; '.join(diffs)}). Resume with the checkpoint's config "
                "or start a new run in another directory."
            )

    def restore(
        self, state: TrainState, iterator: grain.DatasetIterator | None = None
    ) -> TrainState:
        """The latest readable checkpoint, restored into the structure and shardings of
        `state` (and `iterator` moved to the stored position, in place).

        A checkpoint that cannot be read (a corrupt or truncated file) is skipped with a
        warning, falling back to the one before it.

        **Raises:** `ConfigMismatchError` (see `check_config`) and `FileNotFoundError`
        if no checkpoint can be read.
        """
        arrays, static = eqx.partition(state, eqx.is_array)
        template = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(arrays))
        failures = []
        for step in reversed(self.steps()):
            try:
                self.check_config(step)
                items: dict[str, Any] = {"state": ocp.args.StandardRestore(template)}
                if iterator is not None:
                    items["data"] = grain.checkpoint.CheckpointRestore(iterator)
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except ConfigMismatchError:
                raise
            except Exception as error:  # orbax and tensorstore raise many kinds
                failures.append(f"step {step}: {_reason(error)}")
                warnings.warn(
                    f"Checkpoint at step {step} in {self.manager.directory} could not be "
                    f"read ({_reason(error)}); falling back to the "
                    "one before it.",
                    stacklevel=2,
                )
                continue
            return eqx.combine(_from_storable(restored["state"], arrays), static)
        raise FileNotFoundError(self._none_readable(failures))

    def close(self) -> None:
        """Wait for the asynchronous writes to finish and release the manager.

        **Raises:** `CheckpointWriteError` if a write failed (the manager is released
        all the same).
        """
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            with contextlib.suppress(Exception):  # it waits again, and fails the same way
                self.manager.close()
            raise self._write_error(error) from error
        self.manager.close()
