"""Train-step time of `ad.nn.UNet` against a plain reference network of the same architecture.

The reference, `PlainUNet` below, is the VDM UNet written plainly with Equinox layers:
channels first, every block its own module, the blocks unrolled by a Python loop. It is
built from the library network's weights, so the two compute the same function (checked
here before timing, without dropout). Both go through the library's real train step
(`train.build_model`, `train.training_loss` with the VP NELBO, AdamW from
`train.make_optimizer`, `train.make_train_step` over a mesh, EMA), which differs only in
the network; the steps are timed after compilation with `jax.block_until_ready`,
interleaved (library, reference, library, ...) so that a machine shared with other work
slows both alike, and compared as the median of the per-pair ratios.

Configurations: the small one of Google's VDM reference (32x32x3, 2 ResNet layers of 64
channels, one attention head, dropout 0.1, batch 8; VDM's own Flax step takes 706 ms on
2 CPU cores), and a CIFAR-10-sized one (8 layers of 128 channels, batch 4). With `--scan`
the library network at the small configuration also runs with `unroll=False` (its blocks
in `jax.lax.scan`, the default off CPU). The compile time and peak memory of VDM's
32-layer CIFAR-10 network are measured in both modes, and the peak memory of the step
against the batch size is read from XLA's analysis of the compiled step (arguments +
outputs + temporaries - donated aliases).

On XLA:CPU recent jaxlib runs convolutions in YNNPACK by default; Eigen's kernels, which
XLA:CPU used before, are about three times faster for these shapes, and the library's
train step asks for them (`train.default_compiler_options`). The row "library, XLA
defaults" is the same step compiled with XLA's defaults (`compiler_options={}`).

    python benchmarks/train_step.py [--reps 7] [--scan] [--out PATH]

Prints a table and writes JSON.
"""

import argparse
import os
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

import adaptive_diffusion as ad
from _report import machine, peak_bytes, write_report
from adaptive_diffusion import train
from adaptive_diffusion.nn import UNet, fourier_features, sinusoidal_embedding


class PlainBlock(eqx.Module):
    """The UNet's ResNet block with Equinox layers, channels first."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb_proj: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    dropout: eqx.nn.Dropout
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None

    def __call__(self, x, emb, *, key):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, None, None]
        h = jax.nn.silu(self.norm2(h))
        h = self.dropout(h, key=key, inference=key is None)
        h = self.conv2(h)
        return (x if self.shortcut is None else self.shortcut(x)) + h


class PlainAttention(eqx.Module):
    norm: eqx.nn.GroupNorm
    attention: eqx.nn.MultiheadAttention

    def __call__(self, x):
        c, height, width = x.shape
        seq = self.norm(x).reshape(c, height * width).T
        return x + self.attention(seq, seq, seq).T.reshape(x.shape)


class PlainUNet(eqx.Module):
    """The VDM UNet written plainly, with the weights of a library `UNet`."""

    fourier_exponents: tuple[int, ...] = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    time_mlp: eqx.nn.MLP
    conv_in: eqx.nn.Conv2d
    down: tuple[PlainBlock, ...]
    mid1: PlainBlock
    attention: PlainAttention
    mid2: PlainBlock
    up: tuple[PlainBlock, ...]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(self, unet: UNet):
        def block(b, i=None):
            fields = ("norm1", "conv1", "emb_proj", "norm2", "dropout", "conv2", "shortcut")
            parts = [getattr(b, f) for f in fields]
            if i is not None:
                parts = [jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, p) for p in parts]
            return PlainBlock(*parts)

        self.fourier_exponents = unet.fourier_exponents
        self.channels = unet.channels
        self.time_mlp = unet.time_mlp
        self.conv_in = unet.conv_in
        self.down = tuple(block(unet.down_blocks, i) for i in range(unet.n_layers))
        self.mid1 = block(unet.mid_block1)
        self.attention = PlainAttention(unet.mid_attention.norm, unet.mid_attention.attention)
        self.mid2 = block(unet.mid_block2)
        self.up = tuple(block(unet.up_blocks, i) for i in range(unet.n_layers + 1))
        self.norm_out = unet.norm_out
        self.conv_out = unet.conv_out

    def __call__(
        self,
        x: Float[Array, "c h w"],
        t: Real[ArrayLike, ""],
        cond: None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c h w"]:
        emb = self.time_mlp(sinusoidal_embedding(t, self.channels))
        n = len(self.down) + len(self.up) + 2
        keys = [None] * n if key is None else list(jr.split(key, n))
        h = self.conv_in(jnp.concatenate([x, fourier_features(x, self.fourier_exponents)]))
        skips = [h]
        for block in self.down:
            h = block(h, emb, key=keys.pop())
            skips.append(h)
        h = self.mid1(h, emb, key=keys.pop())
        h = self.attention(h)
        h = self.mid2(h, emb, key=keys.pop())
        for block in self.up:
            h = block(jnp.concatenate([h, skips.pop()]), emb, key=keys.pop())
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


def build(channels: int, n_layers: int, unroll: bool | None = None):
    """The library's VP model with a UNet of `channels` x `n_layers` (dropout 0.1) on
    3 x 32 x 32 images, its config, and (when `unroll` is given) its network rebuilt with
    that option and the same weights."""
    overrides = [
        "network.kind=unet",
        f"network.channels={channels}",
        f"network.n_layers={n_layers}",
        "network.dropout=0.1",
    ]
    config = train.load_config(None, overrides)
    model = train.build_model(config, (3, 32, 32), 256, key=jr.key(0))
    if unroll is not None:
        net = model.denoiser
        shell = eqx.filter_eval_shape(
            lambda: UNet(
                (3, 32, 32),
                key=jr.key(0),
                channels=channels,
                n_layers=n_layers,
                dropout=0.1,
                unroll=unroll,
            )
        )
        rebuilt = jax.tree.unflatten(jax.tree.structure(shell), jax.tree.leaves(net))
        model = eqx.tree_at(lambda m: m.denoiser, model, rebuilt)
    return config, model


def with_plain_network(model):
    return eqx.tree_at(lambda m: m.denoiser, model, PlainUNet(model.denoiser))


def batch_of(batch_size: int) -> np.ndarray:
    levels = np.random.default_rng(0).integers(0, 256, (batch_size, 3, 32, 32))
    return np.asarray(ad.from_levels(jnp.asarray(levels), 256))


class Step:
    """One model's compiled train step and its running state."""

    def __init__(self, config, model, batch_size: int, compiler_options=None):
        mesh = train.make_mesh()
        optimizer = train.make_optimizer(config.optimizer, config.steps)
        self.state = train.replicate(mesh, train.init_state(model, optimizer, jr.key(1)))
        self.step = train.make_train_step(
            train.training_loss,
            optimizer,
            mesh,
            ema_decay=config.optimizer.ema_decay,
            compiler_options=compiler_options,
        )
        self.batch = train.shard_batch(mesh, batch_of(batch_size))
        start = time.perf_counter()
        self.run()
        self.compile_s = time.perf_counter() - start  # the first call: trace, compile, run

    def run(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


def check_same_function(model) -> float:
    """Max |difference| of the two networks' outputs on a perturbed copy of the weights
    (the zero-initialised layers made non-zero), without dropout."""
    rng = np.random.default_rng(0)
    params, static = eqx.partition(model.denoiser, eqx.is_inexact_array)
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)
    net = eqx.combine(params, static)
    x = jnp.asarray(batch_of(2))
    t = jnp.array([0.3, 0.8])
    forward = eqx.filter_jit(lambda net, x, t: jax.vmap(net)(x, t))
    ours, theirs = forward(net, x, t), forward(PlainUNet(net), x, t)
    assert float(jnp.max(jnp.abs(ours))) > 0.1
    return float(jnp.max(jnp.abs(ours - theirs)))


def compare(name: str, channels: int, n_layers: int, batch_size: int, reps: int, scan: bool):
    """Rows for the library network (default mode; compiled with XLA's defaults instead of
    `train.default_compiler_options`; with `scan` also `unroll=False`) against the plain
    reference, timed interleaved."""
    config, model = build(channels, n_layers)
    plain = with_plain_network(model)
    max_diff = check_same_function(model)
    steps = {"library": Step(config, model, batch_size), "plain": Step(config, plain, batch_size)}
    if train.default_compiler_options(train.make_mesh()):
        steps["library, XLA defaults"] = Step(config, model, batch_size, compiler_options={})
    if scan:
        steps["library, scan"] = Step(config, build(channels, n_layers, False)[1], batch_size)
    times = {k: [] for k in steps}
    for _ in range(reps):
        for k, s in steps.items():
            times[k].append(s.run())
    rows = []
    for k, s in steps.items():
        ratios = [a / b for a, b in zip(times[k], times["plain"], strict=True)]
        rows.append(
            {
                "config": name,
                "network": k,
                "batch": batch_size,
                "compile_s": s.compile_s,
                "step_ms": 1e3 * statistics.median(times[k]),
                "step_ms_all": [1e3 * t for t in times[k]],
                "ratio_to_plain": statistics.median(ratios),
                "max_output_diff": max_diff,
            }
        )
    return rows


def compiled_step(config, model, batch_size: int):
    """The train step lowered and compiled for `batch_size` (not run), and the seconds it
    took."""
    mesh = train.make_mesh()
    optimizer = train.make_optimizer(config.optimizer, config.steps)
    state = train.replicate(mesh, train.init_state(model, optimizer, jr.key(1)))
    step = train.make_train_step(train.training_loss, optimizer, mesh)
    batch = train.shard_batch(mesh, batch_of(batch_size))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    return compiled, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--scan", action="store_true", help="also time unroll=False")
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--cifar-compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args()
    load_start = os.getloadavg()

    header = (
        f"{'config':<26} {'network':<22} {'batch':>5} {'compile s':>9} {'step ms':>9} "
        f"{'vs plain':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name, channels, n_layers, batch in (
        ("VDM small (2 x 64)", 64, 2, 8),
        ("CIFAR-10-sized (8 x 128)", 128, 8, 4),
    ):
        scan = args.scan and n_layers == 2
        for row in compare(name, channels, n_layers, batch, args.reps, scan):
            rows.append(row)
            print(
                f"{row['config']:<26} {row['network']:<22} {row['batch']:>5} "
                f"{row['compile_s']:>9.1f} {row['step_ms']:>9.1f} {row['ratio_to_plain']:>8.2f}",
                flush=True,
            )

    compile_rows = []
    if args.cifar_compile:
        print("\nthe train step of VDM's CIFAR-10 UNet (32 x 128), batch 4, compiled")
        for unroll in (True, False):
            config, model = build(128, 32, unroll)
            compiled, seconds = compiled_step(config, model, 4)
            peak = peak_bytes(compiled)
            compile_rows.append(
                {
                    "n_layers": 32,
                    "channels": 128,
                    "batch": 4,
                    "unroll": unroll,
                    "compile_s": seconds,
                    "peak_bytes": peak,
                }
            )
            print(
                f"  unroll={unroll!s:<5} compile {seconds:7.1f} s, peak {peak / 2**20:7.0f} MiB",
                flush=True,
            )

    print("\npeak memory of the train step (MiB), VDM small config")
    print(f"  {'batch':>5} {'library':>9} {'plain':>9}")
    memory_rows = []
    config, model = build(64, 2)
    for batch in args.memory_batches:
        library = peak_bytes(compiled_step(config, model, batch)[0])
        plain = peak_bytes(compiled_step(config, with_plain_network(model), batch)[0])
        memory_rows.append({"batch": batch, "library_bytes": library, "plain_bytes": plain})
        print(f"  {batch:>5} {library / 2**20:>9.1f} {plain / 2**20:>9.1f}", flush=True)

    meta = {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "backend": jax.default_backend(),
        **machine(),
    }
    result = {"meta": meta, "steps": rows, "compile": compile_rows, "memory": memory_rows}
    write_report(args.out, result)


if __name__ == "__main__":
    main()
