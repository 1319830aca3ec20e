"""The training loop of a run: data, mesh, model, steps, metrics, checkpoints, pictures.

`train(config, workdir)` is what `adaptive-diffusion train` runs. The run folder holds

- `config.yaml`: the config of the run;
- `checkpoints/<step>/`: orbax checkpoints (state, data position, config);
- `metrics.jsonl` and `tensorboard/`: the training loss, gradient norm, skipped steps,
  throughput and the periodic held-out objective (`eval/elbo_bpd`, or
  `eval/denoising_mse` for a model trained by the denoising loss);
- `samples.png` and `schedule.png`, written when training ends, and `snr.png` (the
  per-pixel SNR curves of a few test images) for a schedule that depends on the example.
"""

import contextlib
import dataclasses
import os
import pathlib
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray
from tqdm.auto import tqdm

from ..data import AbstractImageSource, image_pipeline, levels_to_centres
from ._checkpoint import Checkpointer, CheckpointWriteError
from ._config import Config, ConfigError
from ._evaluate import evaluate, generate
from ._metrics import MetricsWriter
from ._model import DiffusionModel, build_model
from ._optim import make_optimizer
from ._plots import plot_schedule, plot_snr_curves, save_image_grid
from ._sources import make_source
from ._state import TrainState, init_state
from ._step import check_nonfinite, make_mesh, make_train_step, replicate, shard_batch


_SNR_EXAMPLES = 6
"""How many test images `snr.png` shows."""

_EVAL_METRICS = {"elbo": ("elbo_bpd", "elbo_se"), "denoising": ("denoising_mse", "denoising_se")}
"""The names in `metrics.jsonl` of the periodic held-out objective and its standard error."""


def training_loss(
    model: DiffusionModel, batch: Float[Array, " b *shape"], key: PRNGKeyArray
) -> Float[Array, ""]:
    """The mean training objective of a batch (`model.loss`: the negative ELBO in
    bits/dim, or the denoising loss), with dropout on.

    No data check runs here (the pipeline's sources check their levels once, when they
    load): a batch holding NaN or infinite values gives a NaN loss, so that the train
    step skips it and counts it.
    """
    loss = jnp.mean(model.loss(batch, key=key, train=True))
    return jnp.where(jnp.all(jnp.isfinite(batch)), loss, jnp.nan)


@dataclasses.dataclass
class Run:
    """What `setup` builds for a run and `train`, `eval` and `sample` share.

    **Fields:** `config`; `mesh`; `train_source` and `test_source`; `state`, the initial
    (or restored) `TrainState`, replicated on the mesh; `checkpointer`; `optimizer`.
    """

    config: Config
    mesh: jax.sharding.Mesh
    train_source: AbstractImageSource
    test_source: AbstractImageSource
    state: TrainState
    checkpointer: Checkpointer
    optimizer: optax.GradientTransformation


def setup(config: Config, workdir: str | os.PathLike, *, load_test: bool = True) -> Run:
    """Build the sources, the mesh, the model, the optimizer and the initial state.

    **Arguments:** `config`; `workdir`, the run folder; `load_test`, whether to load
    the held-out split.
    """
    workdir = pathlib.Path(workdir)
    train_source = make_source(config.data, "train")
    test_source = make_source(config.data, "test") if load_test else train_source
    mesh = _mesh_for(config)
    key_model, key_state = jax.random.split(jax.random.key(config.seed))
    model = build_model(config, train_source.shape, train_source.num_levels, key=key_model)
    optimizer = make_optimizer(config.optimizer, config.steps)
    state = init_state(model, optimizer, key_state, ema=config.optimizer.ema_decay > 0)
    checkpointer = Checkpointer(workdir / "checkpoints", config, max_to_keep=config.max_to_keep)
    return Run(
        config, mesh, train_source, test_source, replicate(mesh, state), checkpointer, optimizer
    )


def _mesh_for(config: Config) -> jax.sharding.Mesh:
    """The mesh of `config.mesh`, refused with the fix where the devices cannot run it."""
    try:
        mesh = make_mesh(config.mesh.data)
    except ValueError as error:
        raise ConfigError(f"mesh.data={config.mesh.data}: {error}") from None
    size = mesh.devices.size
    if config.batch_size % size:
        multiple = size * -(-config.batch_size // size)
        raise ConfigError(
            f"batch_size={config.batch_size} does not split over the {size} devices of the "
            f"mesh; use a multiple of {size} (--set batch_size={multiple}) or fewer devices "
            "(--set mesh.data=...)."
        )
    return mesh


def eval_model(state: TrainState) -> DiffusionModel:
    """The model to evaluate and sample: the EMA when there is one."""
    return state.model if state.ema is None else state.ema


def write_pictures(
    model: DiffusionModel,
    config: Config,
    mesh: jax.sharding.Mesh,
    directory: str | os.PathLike,
    *,
    key: PRNGKeyArray,
    examples: Float[np.ndarray, " n *shape"] | None = None,
    progress: bool = True,
) -> list[pathlib.Path]:
    """Write `samples.png` (a grid of `config.eval.num_samples` samples) and
    `schedule.png` (the noise schedule) into `directory`, and, for a model whose schedule
    depends on the state (MuLAN's on its latent), `snr.png`: the per-pixel SNR curves of the
    `examples` (a few test images in $[-1, 1]$), or of latents from the prior without
    them (see `plot_snr_curves`). Returns the paths written."""
    directory = pathlib.Path(directory)
    key_samples, key_curves = jax.random.split(key)
    levels = generate(
        model,
        key=key_samples,
        num=config.eval.num_samples,
        sampler=config.eval.sampler,
        num_steps=config.eval.sample_steps,
        mesh=mesh,
        progress=progress,
    )
    ts = jnp.linspace(0.0, 1.0, 101)

    @eqx.filter_jit
    def curves_of(model, key, xs):
        return model.gamma_curves(ts, key=key, xs=xs)

    xs = None if examples is None else jnp.asarray(examples)
    curves = np.asarray(curves_of(model, key_curves, xs))
    if np.all(curves == curves[:1]):
        curves = curves[:1]  # the schedule does not depend on the state
    paths = [directory / "samples.png", directory / "schedule.png"]
    if curves.shape[0] > 1:
        paths.append(directory / "snr.png")
    if jax.process_index() == 0:
        save_image_grid(levels, model.num_levels, paths[0])
        title = f"noise schedule, {config.data.source}"
        plot_schedule(np.asarray(ts), curves, paths[1], title=title)
        if curves.shape[0] > 1:
            labels = None if xs is None else [f"test image {i + 1}" for i in range(len(xs))]
            plot_snr_curves(
                np.asarray(ts),
                curves,
                model.data_shape,
                paths[2],
                labels=labels,
                images=examples,
                title=f"per-pixel log-SNR across latents, {config.data.source}",
            )
    return paths


class RunFolderError(OSError):
    """The run folder cannot be created or written (a read-only or full disk)."""


_PROBE_BYTES = 1 << 16
"""What `train` writes (and removes) in the run folder before it starts, to find a
read-only or full disk before any work is done."""


def _check_writable(workdir: pathlib.Path) -> None:
    with tempfile.TemporaryFile(dir=workdir) as f:
        f.write(bytes(_PROBE_BYTES))
        f.flush()


class TrainingError(RuntimeError):
    """Training stopped before its last step: a write failed (a full or read-only disk,
    a removed folder) or too many steps in a row were non-finite. The message names the
    cause, the step reached and the complete checkpoints on disk, from which
    `train(..., resume=True)` continues.

    **Fields:** `step`, the last step taken; `kept`, the steps of the complete
    checkpoints on disk.
    """

    def __init__(self, message: str, step: int, kept: list[int]):
        super().__init__(message)
        self.step = step
        self.kept = kept


def _close_after_failure(checkpointer: Checkpointer) -> Exception | None:
    """Wait for the checkpoint writes in flight; the error of one that failed, if any."""
    try:
        checkpointer.close()
    except Exception as error:
        return error
    return None


def _stopped(
    error: BaseException, step: int, kept: list[int], close_error: Exception | None
) -> str:
    """What `TrainingError` says: the cause, the step and what was kept."""
    if isinstance(error, FloatingPointError):
        fix = "resume with a lower learning rate (--resume --set optimizer.lr=...)"
    else:
        fix = "give the run folder room or write access, then continue with --resume"
    also = ""
    if close_error is not None and not isinstance(error, CheckpointWriteError):
        also = f" A checkpoint write in flight failed as well: {close_error}"
    if kept:
        where = f"the complete checkpoints on disk are steps {kept}: {fix} (from step {kept[-1]})."
    else:
        where = "no checkpoint is on disk: start the run again."
    return f"Training stopped at step {step} ({error}). Kept: {where}{also}"


def _remove_empty_folders(root: pathlib.Path) -> None:
    """Remove `root` and the folders under it that hold no file; never a file."""
    for folder in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir():
            with contextlib.suppress(OSError):
                folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def train(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    pictures: bool = True,
) -> TrainState:
    """Train a run to `config.steps`, checkpointing along the way.

    **Arguments:**

    - `config`: the run's config.
    - `workdir`: the run folder (created if absent).
    - `resume`: continue from the latest readable checkpoint in `workdir`. Without it,
      a `workdir` that already holds checkpoints is refused, so no run is overwritten.
    - `progress`: show a progress bar (steps/s, images/s, loss, ETA).
    - `pictures`: write `samples.png` and `schedule.png` at the end.

    **Returns:** the final `TrainState`.

    **Raises:** `FileExistsError` (checkpoints present without `resume`),
    `ConfigMismatchError` (resuming with another config), `TrainingError` (a write
    failed, or too many non-finite steps in a row; it names the complete checkpoints
    kept, the last of them finite).
    """
    workdir = pathlib.Path(workdir)
    created = not workdir.exists()
    try:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            _check_writable(workdir)
        except OSError as error:
            raise RunFolderError(
                f"The run folder {workdir} cannot be written ({error}); give it room or write "
                "access, or choose another --workdir."
            ) from error
        run = setup(config, workdir)
    except BaseException:
        if created:  # a run that never started leaves no folder behind
            _remove_empty_folders(workdir)
        raise
    state, checkpointer = run.state, run.checkpointer
    iterator = iter(
        image_pipeline(
            run.train_source,
            global_batch_size=config.batch_size,
            seed=config.seed,
            flip=config.data.flip,
        )
    )
    if checkpointer.steps():
        if not resume:
            checkpointer.close()
            raise FileExistsError(
                f"{workdir} already holds checkpoints (steps {checkpointer.steps()}); pass "
                "--resume to continue that run, or choose another --workdir."
            )
        state = checkpointer.restore(state, iterator)
        if jax.process_index() == 0:
            tqdm.write(f"resumed from the checkpoint of step {int(state.step)}")
    start = step = int(state.step)
    step_fn = make_train_step(
        training_loss, run.optimizer, run.mesh, ema_decay=config.optimizer.ema_decay
    )
    key_eval = jax.random.fold_in(jax.random.key(config.seed), 1)
    model_objective = state.model.objective
    bar = tqdm(
        total=config.steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True
    )
    metrics = None
    try:
        if jax.process_index() == 0:
            config.to_yaml(workdir / "config.yaml")
        metrics = MetricsWriter(workdir, resume_step=start if resume else None)
        window_start, window_steps = time.perf_counter(), 0
        for step in range(start + 1, config.steps + 1):
            state, step_metrics = step_fn(state, shard_batch(run.mesh, next(iterator)))
            window_steps += 1
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                elapsed = time.perf_counter() - window_start
                rate = window_steps / elapsed
                values.update(steps_per_s=rate, images_per_s=rate * config.batch_size)
                metrics.write(step, {f"train/{k}": v for k, v in values.items()})
                bar.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{values['images_per_s']:.0f}")
                check_nonfinite(state, config.max_consecutive_nonfinite)
                window_start, window_steps = time.perf_counter(), 0
            if step % config.eval_every == 0 or step == config.steps:
                result = evaluate(
                    eval_model(state),
                    run.test_source,
                    method=model_objective,
                    key=jax.random.fold_in(key_eval, step),
                    mesh=run.mesh,
                    num_examples=config.eval.examples,
                    batch_size=config.batch_size,
                    repeats=1,
                    progress=False,
                )
                mean_name, se_name = _EVAL_METRICS[model_objective]
                metrics.write(
                    step, {f"eval/{mean_name}": result.mean, f"eval/{se_name}": result.stderr}
                )
                bar.write(f"step {step}: held-out {result}")
                window_start, window_steps = time.perf_counter(), 0
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpointer.save(state, iterator)
        bar.close()
        metrics.close()
        checkpointer.close()
    except BaseException as error:
        bar.close()
        if metrics is not None:
            with contextlib.suppress(Exception):  # the same failure, or closed already
                metrics.close()
        close_error = _close_after_failure(checkpointer)
        if isinstance(error, (OSError, FloatingPointError)):
            kept = checkpointer.complete_steps()
            message = _stopped(error, step, kept, close_error)
            raise TrainingError(message, step, kept) from error
        raise
    if pictures:
        count = min(_SNR_EXAMPLES, len(run.test_source))
        examples = levels_to_centres(run.test_source[np.arange(count)], run.test_source.num_levels)
        try:
            write_pictures(
                eval_model(state),
                config,
                run.mesh,
                workdir,
                key=key_eval,
                examples=examples,
                progress=progress,
            )
        except OSError as error:
            kept = checkpointer.complete_steps()
            raise TrainingError(
                f"Training reached step {step} and its checkpoints are complete (steps "
                f"{kept}), but writing its pictures failed: {error}. Draw samples with "
                "`adaptive-diffusion sample` once the folder has room.",
                step,
                kept,
            ) from error
    return state
