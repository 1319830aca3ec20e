"""Training runs for the tests: a tiny config, the command line in a subprocess, and the
metrics a run wrote."""

import os
import pathlib
import subprocess
import sys

import yaml

from adaptive_diffusion import train


TINY = {
    "process": {"schedule": "linear"},
    "network": {"kind": "mlp", "width": 32, "depth": 1},
    "optimizer": {"lr": 1e-3, "warmup_steps": 5, "ema_decay": 0.9},
    "eval": {"examples": 16, "num_samples": 4, "sampler": "ddim", "sample_steps": 8},
    "batch_size": 16,
    "steps": 20,
    "log_every": 1,
    "eval_every": 1000,
    "checkpoint_every": 10,
}


def write_config(path: pathlib.Path, **changes) -> pathlib.Path:
    data = {**TINY, **changes}
    path.write_text(yaml.safe_dump(data))
    return path


def env(cache: pathlib.Path, **extra) -> dict[str, str]:
    variables = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    variables["PYTHONPATH"] = os.pathsep.join(sys.path)
    # Later processes of a test reuse what the first compiled.
    variables["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    variables["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    variables.update(extra)
    return variables


def cli(cache: pathlib.Path, *args, **variables) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "adaptive_diffusion", *args, "--no-progress"],
        env=env(cache, **variables),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def metric(workdir: pathlib.Path, name: str) -> dict[int, float]:
    lines = train.read_metrics(workdir / "metrics.jsonl")
    return {int(line["step"]): line[name] for line in lines if name in line}


def losses(workdir: pathlib.Path) -> dict[int, float]:
    return metric(workdir, "train/loss")
