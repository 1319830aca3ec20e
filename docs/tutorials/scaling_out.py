"""Scaling out: the shipped digits job on a mesh of 8 CPU devices, its batch and parameter
shardings, orbax checkpoints, a stop, and a resume that retraces the uninterrupted run.

    python docs/tutorials/scaling_out.py [--out DIR] [--quick]
"""

# --8<-- [start:devices]
import os


# Eight CPU devices: the flag must be in the environment before jax is first imported.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
# --8<-- [end:devices]

import argparse
import pathlib
import shutil
import tempfile
import time

import jax
import matplotlib
import matplotlib.pyplot as plt

from adaptive_diffusion import train as ad_train
from adaptive_diffusion.data import image_pipeline


# --8<-- [start:config]
def digits_config(steps: int, checkpoint_every: int, data_devices: int = -1) -> ad_train.Config:
    """The shipped `digits` job (VDM on the 8x8 digits), shortened, every step logged."""
    return ad_train.load_config(
        ad_train.config_path("digits"),
        overrides=[
            f"steps={steps}",
            "log_every=1",
            f"eval_every={steps}",  # one held-out bound, at the end
            f"checkpoint_every={checkpoint_every}",
            "eval.examples=128",
            f"mesh.data={data_devices}",  # -1: every device
        ],
    )
# --8<-- [end:config]


# --8<-- [start:shardings]
def show_shardings(config: ad_train.Config, workdir: pathlib.Path) -> None:
    """The mesh, a sharded batch and the replicated parameters."""
    run = ad_train.setup(config, workdir)
    mesh = run.mesh
    print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}; mesh {dict(mesh.shape)}")
    iterator = iter(
        image_pipeline(run.train_source, global_batch_size=config.batch_size, seed=config.seed)
    )
    batch = ad_train.shard_batch(mesh, next(iterator))
    shards = batch.addressable_shards
    print(
        f"batch {batch.shape}: {batch.sharding.spec} -> {len(shards)} shards of "
        f"{shards[0].data.shape}, rows {shards[0].index[0].start}:{shards[0].index[0].stop} "
        f"on {shards[0].device}, rows {shards[1].index[0].start}:{shards[1].index[0].stop} "
        f"on {shards[1].device}, ..."
    )
    weight = run.state.model.denoiser.lift.weight
    print(
        f"a weight {weight.shape}: {weight.sharding.spec}, fully replicated: "
        f"{weight.sharding.is_fully_replicated}, {len(weight.addressable_shards)} copies"
    )
    run.checkpointer.close()
# --8<-- [end:shardings]


def losses(workdir: pathlib.Path) -> dict[int, float]:
    """`train/loss` by step from a run's `metrics.jsonl`."""
    rows = ad_train.read_metrics(workdir / "metrics.jsonl")
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


# --8<-- [start:first_half]
def train_until(config: ad_train.Config, workdir: pathlib.Path, stop: int) -> None:
    """The loop of `ad_train.train`, by hand, stopped after step `stop`: the same mesh,
    pipeline, step and checkpoints, so that `train(..., resume=True)` can take over."""
    run = ad_train.setup(config, workdir)
    iterator = iter(
        image_pipeline(
            run.train_source,
            global_batch_size=config.batch_size,
            seed=config.seed,
            flip=config.data.flip,
        )
    )
    step_fn = ad_train.make_train_step(
        ad_train.training_loss, run.optimizer, run.mesh, ema_decay=config.optimizer.ema_decay
    )
    metrics = ad_train.MetricsWriter(workdir, tensorboard=False)
    state = run.state
    for step in range(1, stop + 1):
        state, values = step_fn(state, ad_train.shard_batch(run.mesh, next(iterator)))
        metrics.write(step, {"train/loss": float(values["loss"])})
        if step % config.checkpoint_every == 0:
            run.checkpointer.save(state, iterator)  # asynchronous: returns at once
    run.checkpointer.close()  # waits for the writes
    metrics.close()
# --8<-- [end:first_half]


def plot_losses(reference: dict, resumed: dict, other_mesh: dict, stop: int, path):
    """The uninterrupted run's loss, the interrupted one on top, and their differences."""
    steps = sorted(reference)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.4, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    top.plot(steps, [reference[s] for s in steps], color="0.6", lw=3, label="uninterrupted")
    first = [s for s in steps if s <= stop]
    second = [s for s in steps if s > stop]
    top.plot(first, [resumed[s] for s in first], "C0", lw=1, label=f"by hand, stopped at {stop}")
    top.plot(second, [resumed[s] for s in second], "C3", lw=1, label="train(..., resume=True)")
    top.axvline(stop, color="k", lw=0.6, ls=":")
    top.set_ylabel("training loss (bits/dim)")
    top.legend(fontsize=8)
    bottom.plot(steps, [resumed[s] - reference[s] for s in steps], "C3", lw=1, label="8 devices")
    if other_mesh:
        later = sorted(other_mesh)
        diff = [other_mesh[s] - reference[s] for s in later]
        bottom.plot(later, diff, "C2", lw=1, label="resumed on 4 devices")
    bottom.axvline(stop, color="k", lw=0.6, ls=":")
    bottom.set_ylabel("difference")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent / "scaling_out"
    parser.add_argument("--out", type=pathlib.Path, default=default_out)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--workdir", type=pathlib.Path, default=None,
        help="keep the run folders here (default: a temporary folder)",
    )
    args = parser.parse_args()
    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    steps, every = (40, 10) if args.quick else (400, 100)
    stop = steps // 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or pathlib.Path(scratch)
        # --8<-- [start:cache]
        # Compiled steps are kept on disk: a restarted (or resumed) run skips XLA's compile.
        jax.config.update("jax_compilation_cache_dir", str(root / "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        # --8<-- [end:cache]
        config = digits_config(steps, every)
        show_shardings(config, root / "look")

        # --8<-- [start:reference]
        tick = time.perf_counter()
        ad_train.train(config, root / "reference", progress=False, pictures=False)
        reference = losses(root / "reference")
        print(f"uninterrupted: {steps} steps in {time.perf_counter() - tick:.0f} s")
        # --8<-- [end:reference]

        # --8<-- [start:stop]
        train_until(config, root / "interrupted", stop)
        saved = sorted(p.name for p in (root / "interrupted" / "checkpoints").iterdir())
        print(f"stopped after step {stop}; checkpoints on disk: {saved}")
        # --8<-- [end:stop]
        shutil.copytree(root / "interrupted", root / "stopped")  # kept for the 4-device resume

        # --8<-- [start:resume]
        ad_train.train(config, root / "interrupted", resume=True, progress=False, pictures=False)
        resumed = losses(root / "interrupted")
        # --8<-- [end:resume]

        # --8<-- [start:compare]
        print("step  uninterrupted  interrupted+resumed")
        for step in (1, stop - 1, stop, stop + 1, stop + 2, steps):
            print(f"{step:4d}  {reference[step]:.8f}     {resumed[step]:.8f}")
        same = sum(reference[s] == resumed[s] for s in reference)
        worst = max(abs(reference[s] - resumed[s]) for s in reference)
        print(f"identical losses: {same} of {len(reference)} steps; largest difference {worst}")
        # --8<-- [end:compare]

        # --8<-- [start:other_mesh]
        four = root / "four_devices"  # the interrupted run as it was at the stop
        shutil.copytree(root / "stopped", four)
        ad_train.train(
            digits_config(steps, every, data_devices=4), four, resume=True,
            progress=False, pictures=False,
        )
        other = {s: v for s, v in losses(four).items() if s > stop}
        worst = max(abs(other[s] - reference[s]) / reference[s] for s in other)
        print(f"resumed on a mesh of 4 devices: largest relative difference {worst:.1e}")
        # --8<-- [end:other_mesh]
        plot_losses(reference, resumed, other, stop, args.out / "resume.png")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
