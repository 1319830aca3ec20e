"""The command line: `adaptive-diffusion train | eval | sample | autoencoder`.

    adaptive-diffusion train  --config digits [--workdir runs/digits] [--set optimizer.lr=1e-3]
                              [--resume] [--distributed]
    adaptive-diffusion eval   --checkpoint runs/digits --method elbo|vlb|ode|denoising|fid|kid|pr
    adaptive-diffusion sample --checkpoint runs/digits --num 64 --out samples.png
    adaptive-diffusion autoencoder --config digits --workdir runs/digits_autoencoder

`--config` takes a YAML file or the name of a shipped config (`digits`, `cifar10`,
`imagenet32`). Multi-host runs start the same command on every host with
`--distributed` (docs/cli.md, "Meshes and many hosts", shows GPU clusters and TPU pod
slices).
"""

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from importlib import resources

import jax

from .. import metrics
from .._processes import CapabilityError
from ..data import DataError
from ._autoencoder import fit_autoencoder
from ._checkpoint import Checkpointer, ConfigMismatchError
from ._config import Config, ConfigError
from ._evaluate import METHODS, SAMPLERS, evaluate, generate
from ._plots import save_image_grid
from ._quality import QUALITY_METHODS, cached_samples, sample_quality
from ._registry import DEQUANTIZATIONS
from ._trainer import RunFolderError, TrainingError, eval_model, setup, train


SHIPPED_CONFIGS = (
    "digits",
    "digits_nonisotropic",
    "digits_mulan",
    "digits_mdm",
    "digits_ddpm",
    "patches",
    "patches_mulan",
    "cifar10",
    "cifar10_nonisotropic",
    "cifar10_mulan",
    "imagenet32",
)


def config_path(name: str) -> pathlib.Path:
    """A YAML file: `name` itself if it exists, else the shipped config of that name."""
    path = pathlib.Path(name)
    if path.exists():
        return path
    if name in SHIPPED_CONFIGS:
        return pathlib.Path(str(resources.files("adaptive_diffusion") / "configs" / f"{name}.yaml"))
    raise FileNotFoundError(
        f"No config file {name!r}; pass a YAML file or one of the shipped configs "
        f"{', '.join(SHIPPED_CONFIGS)}."
    )


def initialize_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` when `--distributed` is given or `JAX_COORDINATOR_ADDRESS`
    is set; with no address, JAX detects the cluster (SLURM, Open MPI, Cloud TPU)."""
    if not (getattr(args, "distributed", False) or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        return
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def run_directory(checkpoint: str) -> pathlib.Path:
    """The run folder of `--checkpoint`: the folder itself, or the parent of a
    `checkpoints/` folder."""
    path = pathlib.Path(checkpoint)
    if (path / "checkpoints").is_dir():
        return path
    if path.name == "checkpoints" and path.is_dir():
        return path.parent
    raise FileNotFoundError(
        f"{checkpoint!r} holds no checkpoints/ folder; pass the --workdir of a training run."
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _tolerance(text: str) -> float | str:
    if text == "auto":
        return text
    value = float(text)
    if not 1e-7 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (1e-7, 1), got {text}")
    return value


def load_run(checkpoint: str, raw: bool, overrides: Sequence[str] = ()):
    """The config, the run (mesh, sources) and the restored model of a run folder;
    `overrides` may change how the run is evaluated (keys in `RESUMABLE_KEYS`)."""
    directory = run_directory(checkpoint)
    probe = Checkpointer(directory / "checkpoints", Config(), max_to_keep=1)
    steps = probe.steps()
    if not steps:
        probe.close()
        raise FileNotFoundError(f"{directory / 'checkpoints'} holds no checkpoint yet.")
    try:
        config = probe.latest_config().with_overrides(overrides)
    finally:
        probe.close()
    run = setup(config, directory)
    state = run.checkpointer.restore(run.state)
    run.checkpointer.close()
    return config, run, state.model if raw else eval_model(state), int(state.step)


def _add_config(parser: argparse.ArgumentParser, workdir_help: str) -> None:
    parser.add_argument("--config", default="digits", help="a YAML file or a shipped config name")
    parser.add_argument("--workdir", help=workdir_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optimizer.lr=1e-4 (repeatable)",
    )


def _add_distributed(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (also done when JAX_COORDINATOR_ADDRESS is set)",
    )
    group.add_argument("--coordinator", help="host:port of process 0 (default: detected)")
    group.add_argument("--num-processes", type=int, help="number of processes (default: detected)")
    group.add_argument("--process-id", type=int, help="this process's index (default: detected)")


def _read_config(args: argparse.Namespace) -> tuple[pathlib.Path, Config]:
    """`--config` with its `--set` overrides."""
    path = config_path(args.config)
    try:
        return path, Config.from_yaml(path).with_overrides(args.overrides)
    except ValueError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None


def _write_json(path: str | None, result: dict) -> None:
    if path and jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def _eval_quality(args: argparse.Namespace, config: Config, run, model, step: int, progress):
    """`eval --method fid|kid|pr`: samples of the checkpoint (cached in the run folder by
    step, sampler, steps, number and seed) against the whole test split."""
    directory = run_directory(args.checkpoint)
    num = args.num_samples or len(run.test_source)
    sampler = args.sampler or config.eval.sampler
    steps = args.steps or config.eval.sample_steps
    weights = "raw" if args.raw else "ema"
    name = f"step{step}-{weights}-{sampler}{steps}-n{num}-seed{args.seed}.npy"
    levels = cached_samples(
        model,
        directory / "samples" / name,
        seed=args.seed,
        num=num,
        sampler=sampler,
        num_steps=steps,
        mesh=run.mesh,
        batch_size=args.batch_size,
        progress=progress,
    )
    extractor = metrics.classifier_features(
        run.train_source,
        cache_dir=args.feature_cache or directory / "features",
        test=run.test_source,
        steps=args.feature_steps,
    )
    result = sample_quality(
        args.method,
        levels,
        run.test_source,
        extractor,
        extractor_accuracy=extractor.accuracy,
        seed=args.seed,
    )
    print(f"step {step}, {sampler} sampler with {steps} steps: {result}")
    _write_json(args.out, {"step": step, "sampler": sampler, "steps": steps, **result.as_json()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptive-diffusion",
        description="Train diffusion models with designed or learned noise processes; "
        "evaluate bits/dim; draw samples.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model from a config")
    _add_config(p, "the run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_distributed(p)

    p = commands.add_parser("eval", help="held-out bits/dim or sample quality of a model")
    p.add_argument("--checkpoint", required=True, help="the run folder (its --workdir)")
    p.add_argument(
        "--method",
        choices=METHODS + QUALITY_METHODS,
        default="elbo",
        help="elbo, vlb, ode: bits/dim (a process with that capability); denoising: the "
        "noise-prediction MSE (every process); fid, kid, pr: samples against the test split "
        "in the features of a classifier trained on the train split's labels",
    )
    p.add_argument("--num-examples", type=_positive_int, help="test examples (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument(
        "--num-steps", type=_positive_int, default=1000, help="steps T of the vlb method"
    )
    p.add_argument(
        "--dequantization",
        choices=sorted(DEQUANTIZATIONS),
        help="the ode method's dequantisation (default: the run's eval.dequantization)",
    )
    p.add_argument(
        "--ode-samples",
        type=_positive_int,
        help="importance-weighted draws per example of the ode method (default: the run's)",
    )
    p.add_argument(
        "--tolerance",
        type=_tolerance,
        default=1e-5,
        help="rtol = atol of the ode method's solves, or 'auto': the loosest whose solver "
        "bias is within a tenth of the confidence interval's half-width (default: 1e-5)",
    )
    p.add_argument(
        "--solver-check",
        type=_non_negative_int,
        default=64,
        help="examples the ode method solves again at 1e-7 to estimate its solver error "
        "(0: none; default: 64)",
    )
    p.add_argument(
        "--grid",
        action="store_true",
        help="solve the ode method on a fixed grid tuned to the checked examples' adaptive "
        "solves at the tolerance (faster at equal error; the check measures its bias)",
    )
    quality = p.add_argument_group("fid, kid, pr")
    quality.add_argument(
        "--num-samples", type=_positive_int, help="samples drawn (default: the test split's size)"
    )
    quality.add_argument(
        "--sampler", choices=sorted(SAMPLERS), help="default: the run's eval.sampler"
    )
    quality.add_argument(
        "--steps", type=_positive_int, help="sampler steps (default: the run's eval.sample_steps)"
    )
    quality.add_argument(
        "--feature-steps",
        type=_positive_int,
        default=1500,
        help="training steps of the feature classifier",
    )
    quality.add_argument(
        "--feature-cache",
        help="the folder caching the feature classifier (default: the run folder's features/)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="use the raw weights, not their EMA")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.add_argument("--no-progress", action="store_true")
    _add_distributed(p)

    p = commands.add_parser("sample", help="draw samples from a trained model")
    p.add_argument("--checkpoint", required=True, help="the run folder (its --workdir)")
    p.add_argument("--num", type=_positive_int, default=64, help="samples drawn")
    p.add_argument("--out", default="samples.png", help="the PNG file of the grid")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral")
    p.add_argument("--steps", type=_positive_int, default=1000, help="sampler steps (not for ode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="use the raw weights, not their EMA")
    p.add_argument("--no-progress", action="store_true")
    _add_distributed(p)

    p = commands.add_parser(
        "autoencoder", help="train the autoencoder of latent diffusion on a config's data"
    )
    _add_config(p, "its folder (default: runs/<config name>_autoencoder)")
    p.add_argument("--latent-channels", type=_positive_int, default=2)
    p.add_argument("--channels", type=_positive_int, default=32)
    p.add_argument("--steps", type=_positive_int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "eval" and args.grid and (args.method != "ode" or not args.solver_check):
        parser.error(
            "--grid tunes its grid on the examples of the solver check: use it with "
            "--method ode and --solver-check > 0"
        )
    initialize_distributed(args)
    progress = not getattr(args, "no_progress", False)
    try:
        if args.command == "autoencoder":
            path, config = _read_config(args)
            workdir = args.workdir or os.path.join("runs", f"{path.stem}_autoencoder")
            _, error = fit_autoencoder(
                config,
                workdir,
                latent_channels=args.latent_channels,
                channels=args.channels,
                steps=args.steps,
                seed=args.seed,
            )
            print(f"autoencoder in {workdir}: {error}")
        elif args.command == "train":
            path, config = _read_config(args)
            workdir = args.workdir or os.path.join("runs", path.stem)
            train(config, workdir, resume=args.resume, progress=progress)
            print(f"run folder: {workdir}")
        elif args.command == "eval":
            overrides = [
                f"eval.{name}={value}"
                for name, value in (
                    ("dequantization", args.dequantization),
                    ("ode_samples", args.ode_samples),
                )
                if value is not None
            ]
            config, run, model, step = load_run(args.checkpoint, args.raw, overrides)
            if args.method in QUALITY_METHODS:
                _eval_quality(args, config, run, model, step, progress)
                return 0
            result = evaluate(
                model,
                run.test_source,
                method=args.method,
                key=jax.random.key(args.seed),
                mesh=run.mesh,
                batch_size=args.batch_size,
                num_examples=args.num_examples,
                num_steps=args.num_steps,
                tolerance=args.tolerance,
                solver_check=args.solver_check,
                grid=args.grid,
                progress=progress,
            )
            print(f"step {step}, test split: {result}")
            _write_json(args.out, {"step": step, **result.as_json()})
        else:
            config, run, model, step = load_run(args.checkpoint, args.raw)
            levels = generate(
                model,
                key=jax.random.key(args.seed),
                num=args.num,
                sampler=args.sampler,
                num_steps=args.steps,
                mesh=run.mesh,
                progress=progress,
            )
            if jax.process_index() == 0:
                save_image_grid(levels, model.num_levels, args.out)
                print(f"step {step}: {args.num} samples ({args.sampler}) written to {args.out}")
    except (
        FileNotFoundError,
        FileExistsError,
        ConfigMismatchError,
        ConfigError,
        CapabilityError,
        DataError,
        RunFolderError,
    ) as error:
        print(f"adaptive-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"adaptive-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0
