"""A long run: the digits model for tens of thousands of steps with a checkpoint every few
hundred, watched from outside. Marked `soak`: neither `make test` nor `make test-slow`
runs it; `make soak` does (about 15 minutes on 2 CPU cores at the default 20,000 steps;
`SOAK_STEPS` changes the length).

It checks that the process's resident memory stays flat once the run is warm, and that
the checkpoint folder never holds more complete checkpoints than `max_to_keep` (plus the
one just finished, for the moment before orbax deletes the oldest) and ends with exactly
`max_to_keep`. The figures go to `soak.json` in the test's folder and to the output.
"""

import json
import os
import time

import numpy as np
import pytest

from . import runs


_STEPS = int(os.environ.get("SOAK_STEPS", "20000"))
_EVERY = 250
_KEEP = 3


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _complete(folder) -> int:
    return sum(p.name.isdigit() for p in folder.iterdir()) if folder.is_dir() else 0


@pytest.mark.soak
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc for memory")
def test_long_run_memory_and_checkpoints_stay_flat(tmp_path):
    workdir = tmp_path / "run"
    proc = runs.cli(
        tmp_path / "cache",
        "train",
        "--config",
        "digits",
        "--workdir",
        str(workdir),
        "--set",
        f"steps={_STEPS}",
        "--set",
        f"checkpoint_every={_EVERY}",
        "--set",
        f"max_to_keep={_KEEP}",
        "--set",
        f"eval_every={_STEPS // 8}",
    )
    samples = []  # (seconds, step reached, RSS in MiB, complete checkpoints)
    start = time.monotonic()
    while proc.poll() is None:
        metrics = workdir / "metrics.jsonl"
        step = max(runs.losses(workdir), default=0) if metrics.exists() else 0
        try:
            rss = _rss_mib(proc.pid)
        except (OSError, RuntimeError):  # it ended meanwhile
            break
        samples.append((time.monotonic() - start, step, rss, _complete(workdir / "checkpoints")))
        time.sleep(2.0)
    out = runs.finish(proc, timeout=60)
    assert sorted(runs.losses(workdir))[-1] == _STEPS, out

    steps = np.array([s[1] for s in samples])
    rss = np.array([s[2] for s in samples])
    counts = np.array([s[3] for s in samples])
    # Memory over the second half of the steps, once the allocator has settled: it grows
    # by ~50 MiB over the first 7,500 steps of 20,000 (the evaluations, every 2,500
    # steps, and orbax's first saves), then stays within ~25 MiB (measured). The growth
    # is that of a straight line fitted against the step, over the span: a leak of
    # 2 KiB a step would show as 20 MiB.
    warm = steps >= _STEPS // 2
    slope = np.polyfit(steps[warm], rss[warm], 1)[0]
    growth = slope * (_STEPS - _STEPS // 2)
    report = {
        "steps": _STEPS,
        "seconds": samples[-1][0],
        "rss_mib_half": float(rss[warm][0]),
        "rss_mib_max": float(rss.max()),
        "rss_mib_last": float(rss[warm][-1]),
        "rss_growth_mib_fitted": float(growth),
        "checkpoints_max": int(counts.max()),
        "checkpoints_final": _complete(workdir / "checkpoints"),
        "samples": len(samples),
        "series": [list(sample) for sample in samples],
    }
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "series"}, indent=1))
    assert abs(growth) < 16, report
    assert rss[warm].max() - rss[warm].min() < 48, report
    assert counts.max() <= _KEEP + 1, report
    assert report["checkpoints_final"] == _KEEP, report
