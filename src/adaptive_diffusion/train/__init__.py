"""The training stack: config, model interface, optimizer and EMA, sharded train step,
checkpoints, metrics, evaluation, pictures and the command line."""

from ._autoencoder import (
    Reconstruction as Reconstruction,
    fit_autoencoder as fit_autoencoder,
    reconstruction as reconstruction,
)
from ._autoencoder_files import (
    load_autoencoder as load_autoencoder,
    save_autoencoder as save_autoencoder,
)
from ._checkpoint import (
    RESUMABLE_KEYS as RESUMABLE_KEYS,
    Checkpointer as Checkpointer,
    CheckpointWriteError as CheckpointWriteError,
    ConfigMismatchError as ConfigMismatchError,
)
from ._cli import SHIPPED_CONFIGS as SHIPPED_CONFIGS, config_path as config_path, main as main
from ._config import (
    Config as Config,
    ConfigError as ConfigError,
    DataConfig as DataConfig,
    EvalConfig as EvalConfig,
    MeshConfig as MeshConfig,
    NetworkConfig as NetworkConfig,
    OptimizerConfig as OptimizerConfig,
    ProcessConfig as ProcessConfig,
    load_config as load_config,
)
from ._evaluate import (
    METHODS as METHODS,
    SAMPLERS as SAMPLERS,
    BitsPerDim as BitsPerDim,
    evaluate as evaluate,
    generate as generate,
)
from ._metrics import MetricsWriter as MetricsWriter, read_metrics as read_metrics
from ._model import DiffusionModel as DiffusionModel, build_model as build_model
from ._optim import (
    ema_update as ema_update,
    make_optimizer as make_optimizer,
    make_schedule as make_schedule,
)
from ._plots import plot_schedule as plot_schedule, save_image_grid as save_image_grid
from ._quality import (
    QUALITY_METHODS as QUALITY_METHODS,
    SampleQuality as SampleQuality,
    cached_samples as cached_samples,
    sample_quality as sample_quality,
)
from ._registry import (
    BETAS as BETAS,
    DEQUANTIZATIONS as DEQUANTIZATIONS,
    NOISES as NOISES,
    PROCESS_KINDS as PROCESS_KINDS,
    ProcessKind as ProcessKind,
)
from ._sources import make_source as make_source
from ._state import TrainState as TrainState, init_state as init_state
from ._step import (
    DATA_AXIS as DATA_AXIS,
    batch_sharding as batch_sharding,
    check_nonfinite as check_nonfinite,
    default_compiler_options as default_compiler_options,
    make_mesh as make_mesh,
    make_train_step as make_train_step,
    param_sharding as param_sharding,
    replicate as replicate,
    shard_batch as shard_batch,
)
from ._trainer import (
    RunFolderError as RunFolderError,
    TrainingError as TrainingError,
    eval_model as eval_model,
    setup as setup,
    train as train,
    training_loss as training_loss,
    write_pictures as write_pictures,
)


__all__ = [
    "Reconstruction",
    "fit_autoencoder",
    "reconstruction",
    "load_autoencoder",
    "save_autoencoder",
    "RESUMABLE_KEYS",
    "Checkpointer",
    "CheckpointWriteError",
    "ConfigMismatchError",
    "ConfigError",
    "SHIPPED_CONFIGS",
    "config_path",
    "main",
    "Config",
    "DataConfig",
    "EvalConfig",
    "MeshConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "ProcessConfig",
    "load_config",
    "METHODS",
    "SAMPLERS",
    "BitsPerDim",
    "evaluate",
    "generate",
    "MetricsWriter",
    "read_metrics",
    "DiffusionModel",
    "build_model",
    "ema_update",
    "make_optimizer",
    "make_schedule",
    "plot_schedule",
    "save_image_grid",
    "QUALITY_METHODS",
    "SampleQuality",
    "cached_samples",
    "sample_quality",
    "BETAS",
    "DEQUANTIZATIONS",
    "NOISES",
    "PROCESS_KINDS",
    "ProcessKind",
    "make_source",
    "TrainState",
    "init_state",
    "DATA_AXIS",
    "batch_sharding",
    "check_nonfinite",
    "default_compiler_options",
    "make_mesh",
    "make_train_step",
    "param_sharding",
    "replicate",
    "shard_batch",
    "RunFolderError",
    "TrainingError",
    "eval_model",
    "setup",
    "train",
    "training_loss",
    "write_pictures",
]
