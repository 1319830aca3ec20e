"""Train-step time of every process family at equal network, as a ratio to VP, and the
step's peak memory against batch size.

Each row is a shipped digits config (the same MLP denoiser, batch 128, optimiser and
EMA; only `process` differs): `digits` (VP, learned schedule), `digits_nonisotropic`
(GFF noise by FFT), `digits_mulan` (MLP encoder, categorical latent, polynomial schedule
network; and the same with the reference's top-k latent and its sum-of-Gamma noise) and
`digits_mdm` (CLD, K = 1; `--mdm` adds ALDA, MALDA and learned K = 1, 2).
The step is the real one (`make_train_step` over a mesh of all devices, the config's
loss), compiled once per process; then `--rounds` rounds each time `--steps` steps of
every process in turn (interleaved, so that a change in the machine's load hits every
row alike), and the table gives the median over rounds and its ratio to VP's median.

Peak memory is XLA's own figure for the compiled step (`memory_analysis()`: arguments,
outputs and temporaries, less the donated aliases), for each batch size in `--batches`.

    python benchmarks/process_overhead.py [--rounds 7] [--steps 20] [--mdm]

Prints a table and writes JSON (`--out`).
"""

import argparse
import statistics
import time

import jax
import numpy as np

from _report import machine, peak_bytes, write_report
from adaptive_diffusion import train
from adaptive_diffusion.data import DigitsSource, image_pipeline


def batch_of(source: DigitsSource, batch_size: int) -> np.ndarray:
    return next(iter(image_pipeline(source, global_batch_size=batch_size, seed=0)))


class Step:
    """One process's compiled train step with its own state and batch."""

    def __init__(self, config: train.Config, source: DigitsSource, batch_size: int):
        self.mesh = train.make_mesh()
        model = train.build_model(config, source.shape, source.num_levels, key=jax.random.key(0))
        self.optimizer = train.make_optimizer(config.optimizer, config.steps)
        self.state = train.replicate(
            self.mesh, train.init_state(model, self.optimizer, jax.random.key(1))
        )
        self.step = train.make_train_step(
            train.training_loss, self.optimizer, self.mesh, ema_decay=config.optimizer.ema_decay
        )
        self.batch = train.shard_batch(self.mesh, batch_of(source, batch_size))
        start = time.perf_counter()
        self.run(1)
        self.compile_s = time.perf_counter() - start

    def run(self, steps: int) -> float:
        """Milliseconds per step over `steps` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return 1e3 * (time.perf_counter() - start) / steps

    def peak_bytes(self) -> int:
        return peak_bytes(self.step.lower(self.state, self.batch).compile())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--mdm", action="store_true", help="every MDM diffusion, not only CLD")
    parser.add_argument("--out", default="benchmarks/results/process_overhead.json")
    args = parser.parse_args()

    rows = {
        "VP": ("digits", []),
        "NonIsotropicVP": ("digits_nonisotropic", []),
        "MuLAN": ("digits_mulan", []),
        "MuLAN (top-k)": ("digits_mulan", ["process.latent=topk", "process.latent_size=0"]),
        "CLD (K=1)": ("digits_mdm", []),
    }
    if args.mdm:
        rows["ALDA (K=2)"] = ("digits_mdm", ["process.diffusion=alda"])
        rows["MALDA (K=2)"] = ("digits_mdm", ["process.diffusion=malda", "process.num_aux=2"])
        rows["learned (K=1)"] = ("digits_mdm", ["process.diffusion=learned", "process.num_aux=1"])
        rows["learned (K=2)"] = ("digits_mdm", ["process.diffusion=learned", "process.num_aux=2"])
    source = DigitsSource("train")
    configs = {
        name: train.Config.from_yaml(train.config_path(file)).with_overrides(overrides)
        for name, (file, overrides) in rows.items()
    }
    steps = {name: Step(config, source, 128) for name, config in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step.run(args.steps))
    peaks = {
        name: {b: Step(config, source, b).peak_bytes() for b in args.batches}
        for name, config in configs.items()
    }

    vp = statistics.median(times["VP"])
    batch_heads = " ".join(f"{f'MiB @{b}':>9}" for b in args.batches)
    header = f"{'process':<16} {'compile s':>9} {'step ms':>8} {'vs VP':>6} {batch_heads}"
    print(header)
    print("-" * len(header))
    results = []
    for name, step in steps.items():
        median = statistics.median(times[name])
        memory = " ".join(f"{peaks[name][b] / 2**20:>9.1f}" for b in args.batches)
        print(f"{name:<16} {step.compile_s:>9.1f} {median:>8.1f} {median / vp:>6.2f} {memory}")
        results.append(
            {
                "process": name,
                "config": rows[name][0],
                "overrides": rows[name][1],
                "compile_s": step.compile_s,
                "step_ms": times[name],
                "step_ms_median": median,
                "ratio_to_vp": median / vp,
                "peak_bytes": {str(b): peaks[name][b] for b in args.batches},
            }
        )
    meta = {
        **machine(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "batch": 128,
    }
    write_report(args.out, {"meta": meta, "rows": results})


if __name__ == "__main__":
    main()
