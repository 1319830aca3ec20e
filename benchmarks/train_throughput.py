"""Training throughput: images/s of the train step, and of the data pipeline beside it.

Two models: the shipped digits config (MLP, batch 128) and a CIFAR-10-sized VDM UNet
(3 x 32 x 32 and the shipped cifar10 config's UNet, 128 channels, dropout 0.1, with
`--cifar-layers` blocks: 8 by default on CPU, where the published 32 take minutes per
step; a small batch). Each train
step is the real one (`make_train_step` over a mesh of all devices, the config's
optimizer, EMA and loss), timed after compilation with `jax.block_until_ready`. The
loaders are the real grain pipelines: the digits source, and a CIFAR-10 source read
from python-pickle batches written to a temporary folder in the official format (random
pixels; the loader's cost does not depend on them). The loader must deliver at least
10x the images the step consumes.

    python benchmarks/train_throughput.py [--cifar-batch 8] [--out PATH]

Prints a table and writes JSON.
"""

import argparse
import pathlib
import pickle
import tempfile
import time

import jax
import numpy as np

from _report import machine, write_report
from adaptive_diffusion import train
from adaptive_diffusion.data import CIFAR10Source, DigitsSource, image_pipeline


def step_rate(config: train.Config, source, batch_size: int, steps: int) -> dict[str, float]:
    """Images/s of the train step of `config` on `source`'s shapes, after compilation."""
    mesh = train.make_mesh()
    model = train.build_model(config, source.shape, source.num_levels, key=jax.random.key(0))
    optimizer = train.make_optimizer(config.optimizer, config.steps)
    state = train.replicate(mesh, train.init_state(model, optimizer, jax.random.key(1)))
    step = train.make_train_step(
        train.training_loss, optimizer, mesh, ema_decay=config.optimizer.ema_decay
    )
    batches = iter(image_pipeline(source, global_batch_size=batch_size, seed=0))
    batch = train.shard_batch(mesh, next(batches))
    start = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / steps
    params = sum(x.size for x in jax.tree.leaves(state.model) if isinstance(x, jax.Array))
    return {
        "params": params,
        "batch": batch_size,
        "compile_s": compile_s,
        "step_ms": 1e3 * seconds,
        "step_images_per_s": batch_size / seconds,
    }


def loader_rate(source, batch_size: int, batches: int) -> float:
    """Images/s of the grain pipeline (shuffle, batch, map to bin centres, prefetch)."""
    iterator = iter(image_pipeline(source, global_batch_size=batch_size, seed=0))
    next(iterator)  # start the read threads
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def write_cifar(directory: pathlib.Path, per_file: int) -> None:
    """CIFAR-10 python batches of random pixels, in the official format."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": list(rng.integers(0, 10, per_file))}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-steps", type=int, default=50)
    parser.add_argument("--cifar-batch", type=int, default=4)
    parser.add_argument("--cifar-steps", type=int, default=2)
    parser.add_argument("--cifar-layers", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    header = (
        f"{'model':<34} {'params':>10} {'batch':>5} {'compile s':>9} {'step ms':>9} "
        f"{'step img/s':>10} {'loader img/s':>12} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    rows = []

    def report(row):
        row["loader_over_step"] = row["loader_images_per_s"] / row["step_images_per_s"]
        rows.append(row)
        print(
            f"{row['model']:<34} {row['params']:>10,} {row['batch']:>5} "
            f"{row['compile_s']:>9.1f} {row['step_ms']:>9.1f} {row['step_images_per_s']:>10.1f} "
            f"{row['loader_images_per_s']:>12.0f} {row['loader_over_step']:>7.0f}",
            flush=True,
        )

    digits_config = train.Config.from_yaml(train.config_path("digits"))
    digits = DigitsSource("train")
    report(
        {
            "model": "digits MLP (digits config)",
            **step_rate(digits_config, digits, 128, args.digits_steps),
            "loader_images_per_s": loader_rate(digits, 128, 200),
        }
    )
    cifar_config = train.Config.from_yaml(train.config_path("cifar10")).with_overrides(
        [f"network.n_layers={args.cifar_layers}"]
    )
    with tempfile.TemporaryDirectory() as directory:
        write_cifar(pathlib.Path(directory), 2000)
        cifar = CIFAR10Source(directory, "train")
        report(
            {
                "model": f"CIFAR-10 VDM UNet, {args.cifar_layers} blocks",
                **step_rate(cifar_config, cifar, args.cifar_batch, args.cifar_steps),
                "loader_images_per_s": loader_rate(cifar, 128, 50),
            }
        )
    write_report(args.out, {"meta": machine(), "rows": rows})


if __name__ == "__main__":
    main()
