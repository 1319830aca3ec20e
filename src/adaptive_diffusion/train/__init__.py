"""The training stack: config, optimizer and EMA, train state, sharded train step."""

from ._config import (
    Config as Config,
    DataConfig as DataConfig,
    MeshConfig as MeshConfig,
    NetworkConfig as NetworkConfig,
    OptimizerConfig as OptimizerConfig,
    ProcessConfig as ProcessConfig,
    load_config as load_config,
)
from ._optim import (
    ema_update as ema_update,
    make_optimizer as make_optimizer,
    make_schedule as make_schedule,
)
from ._state import TrainState as TrainState, init_state as init_state
from ._step import (
    DATA_AXIS as DATA_AXIS,
    batch_sharding as batch_sharding,
    check_nonfinite as check_nonfinite,
    make_mesh as make_mesh,
    make_train_step as make_train_step,
    param_sharding as param_sharding,
    replicate as replicate,
    shard_batch as shard_batch,
)
