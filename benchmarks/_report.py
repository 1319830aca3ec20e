"""What every benchmark's JSON report carries: the machine it ran on, and the writing."""

import json
import pathlib
import platform
from typing import Any

import jax


def machine() -> dict[str, Any]:
    """The devices, jax, Python and CPU architecture of this run."""
    return {
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def peak_bytes(compiled) -> int:
    """XLA's peak memory of a compiled program (`jax.stages.Compiled`): arguments, outputs
    and temporaries, less the donated aliases."""
    stats = compiled.memory_analysis()
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def write_report(path: str | pathlib.Path, report: dict[str, Any]) -> None:
    """Write `report` as indented JSON to `path` (creating its folder) and say so."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
