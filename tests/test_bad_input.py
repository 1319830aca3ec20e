"""Bad input, as a table: what a new user types wrong, and what the command line says.

Every row runs `adaptive-diffusion` (in this process) on a folder of fixtures written here
in the formats the loaders read, and asserts that it exits with status 2 (a usage or
input error), that no traceback is printed, that the message names the problem (the
fragment in the row), and that nothing on disk changed: no file written, changed or
removed, and no run folder left behind. `docs/reliability.md` shows the same table; a test
below keeps the two in step.
"""

import hashlib
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from PIL import Image

from adaptive_diffusion import train


TINY = {
    "process": {"schedule": "linear"},
    "network": {"kind": "mlp", "width": 16, "depth": 1},
    "optimizer": {"warmup_steps": 1, "ema_decay": 0.9},
    "eval": {"examples": 8, "num_samples": 4, "sampler": "ddim", "sample_steps": 2},
    "batch_size": 8,
    "steps": 2,
    "log_every": 1,
    "eval_every": 1000,
    "checkpoint_every": 1,
}

_TRAIN = ["train", "--config", "{tiny}", "--workdir", "{root}/new"]
_CIFAR = ["train", "--config", "cifar10", "--workdir", "{root}/new", "--set"]
_INET = ["train", "--config", "imagenet32", "--workdir", "{root}/new", "--set"]
_NPZ = [*_TRAIN, "--set", "data.source=npz", "--set", "data.test_path={root}/ok.npy", "--set"]
_FOLDER = [*_TRAIN, "--set", "data.source=folder", "--set", "data.test_path={root}/images"]

# (what is wrong, the command, a fragment of the message that names it)
ROWS: list[tuple[str, list[str], str]] = [
    # The config: files, keys, values.
    ("unknown shipped config", ["train", "--config", "digitz"], "shipped configs"),
    ("config file of invalid YAML", ["train", "--config", "{root}/broken.yaml"], "not valid YAML"),
    ("config file not a mapping", ["train", "--config", "{root}/list.yaml"], "expected a mapping"),
    ("mistyped key in a config file", ["train", "--config", "{root}/typo.yaml"], "'stepz'"),
    ("mistyped key in --set", [*_TRAIN, "--set", "optimizer.lrr=1"], "'optimizer.lrr'"),
    ("--set without '='", [*_TRAIN, "--set", "steps"], "key=value"),
    ("negative steps", [*_TRAIN, "--set", "steps=-5"], "steps must be positive"),
    ("zero batch size", [*_TRAIN, "--set", "batch_size=0"], "batch_size must be positive"),
    ("learning rate of the wrong type", [*_TRAIN, "--set", "optimizer.lr=fast"], "type float"),
    ("negative learning rate", [*_TRAIN, "--set", "optimizer.lr=-1"], "lr must be >= 0"),
    ("EMA decay above 1", [*_TRAIN, "--set", "optimizer.ema_decay=2"], "in [0, 1]"),
    ("dropout of 1", [*_TRAIN, "--set", "network.dropout=1"], "in [0, 1)"),
    ("unknown process kind", [*_TRAIN, "--set", "process.kind=edm"], "process.kind 'edm'"),
    ("unknown network kind", [*_TRAIN, "--set", "network.kind=dit"], "'mlp', 'unet'"),
    ("unknown data source", [*_TRAIN, "--set", "data.source=mnist"], "'digits'"),
    ("unknown dequantisation", [*_TRAIN, "--set", "eval.dequantization=x"], "'x'"),
    ("more mesh devices than exist", [*_TRAIN, "--set", "mesh.data=64"], "mesh.data=64"),
    # Data files of every format.
    ("CIFAR-10 folder missing", [*_CIFAR, "data.path={root}/nowhere"], "does not exist"),
    ("CIFAR-10 batch empty", [*_CIFAR, "data.path={root}/cifar_empty"], "not a readable pickle"),
    ("CIFAR-10 batch truncated", [*_CIFAR, "data.path={root}/cifar_cut"], "was truncated"),
    ("CIFAR-10 batch garbled", [*_CIFAR, "data.path={root}/cifar_junk"], "not a readable pickle"),
    ("CIFAR-10 batch of wrong shape", [*_CIFAR, "data.path={root}/cifar_shape"], "(N, 3072)"),
    ("CIFAR-10 batch not a dict", [*_CIFAR, "data.path={root}/cifar_list"], "without a b'data'"),
    ("ImageNet32 folder empty", [*_INET, "data.path={root}/empty"], "does not exist"),
    ("ImageNet32 npz garbled", [*_INET, "data.path={root}/inet_junk"], "not an npz"),
    ("ImageNet32 npz without 'data'", [*_INET, "data.path={root}/inet_keys"], "has entries"),
    ("npz images of float dtype", [*_NPZ, "data.path={root}/float.npy"], "dtype float32"),
    ("npz images above the levels", [*_NPZ, "data.path={root}/range.npy"], "levels"),
    ("npz images of 3 axes", [*_NPZ, "data.path={root}/flat.npy"], "4 axes"),
    (
        "npz without test_path",
        [*_TRAIN, "--set", "data.source=npz", "--set", "data.path={root}/ok.npy"],
        "test_path",
    ),
    ("image folder empty", [*_FOLDER, "--set", "data.path={root}/empty"], "no image files"),
    ("image folder of mixed sizes", [*_FOLDER, "--set", "data.path={root}/mixed"], "size"),
    ("image file garbled", [*_FOLDER, "--set", "data.path={root}/junk_png"], "junk.png"),
    # Runs and checkpoints.
    ("train into a run folder without --resume", [*_TRAIN[:3], "--workdir", "{run}"], "--resume"),
    (
        "resume with another config",
        [*_TRAIN[:3], "--workdir", "{run}", "--resume", "--set", "seed=3"],
        "seed: checkpoint 0, now 3",
    ),
    (
        "resume from garbled checkpoints",
        [*_TRAIN[:3], "--workdir", "{root}/garbled", "--resume"],
        "No readable checkpoint",
    ),
    ("eval of a folder with no run", ["eval", "--checkpoint", "{root}/empty"], "checkpoints/"),
    ("eval of a missing folder", ["eval", "--checkpoint", "{root}/nowhere"], "checkpoints/"),
    ("eval of garbled checkpoints", ["eval", "--checkpoint", "{root}/garbled"], "No readable"),
    ("eval of truncated checkpoints", ["eval", "--checkpoint", "{root}/truncated"], "No readable"),
    ("sample of garbled checkpoints", ["sample", "--checkpoint", "{root}/garbled"], "No readable"),
    # Command-line arguments.
    ("no command", [], "required: command"),
    ("unknown command", ["fit"], "invalid choice: 'fit'"),
    ("unknown eval method", ["eval", "--checkpoint", "{run}", "--method", "nll"], "'nll'"),
    ("unknown sampler", ["sample", "--checkpoint", "{run}", "--sampler", "euler"], "'euler'"),
    ("sample --num 0", ["sample", "--checkpoint", "{run}", "--num", "0"], "positive integer"),
    ("sample --steps -1", ["sample", "--checkpoint", "{run}", "--steps", "-1"], "positive integer"),
    ("eval --batch-size 0", ["eval", "--checkpoint", "{run}", "--batch-size", "0"], "positive"),
    ("eval --tolerance 2", ["eval", "--checkpoint", "{run}", "--tolerance", "2"], "(1e-7, 1)"),
    (
        "eval --solver-check -1",
        ["eval", "--checkpoint", "{run}", "--solver-check", "-1"],
        "non-negative",
    ),
    (
        "eval --grid without the check",
        ["eval", "--checkpoint", "{run}", "--grid", "--solver-check", "0"],
        "--solver-check > 0",
    ),
    (
        "unknown dequantisation for eval",
        ["eval", "--checkpoint", "{run}", "--dequantization", "none"],
        "'none'",
    ),
]


def _write_fixtures(root: pathlib.Path) -> None:
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (root / "broken.yaml").write_text("steps: [1,\n")
    (root / "list.yaml").write_text("- steps\n- 10\n")
    (root / "typo.yaml").write_text("stepz: 10\n")
    (root / "empty").mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    batch = pickle.dumps({b"data": images, b"labels": [0] * 4})
    files = {
        "cifar_empty/data_batch_1": b"",
        "cifar_cut/data_batch_1": batch[: len(batch) // 2],
        "cifar_junk/data_batch_1": rng.bytes(500),
        "cifar_shape/data_batch_1": pickle.dumps({b"data": images[:, :100], b"labels": [0]}),
        "cifar_list/data_batch_1": pickle.dumps([images]),
        "inet_junk/train_data_batch_1.npz": rng.bytes(500),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "inet_keys").mkdir()
    np.savez(root / "inet_keys" / "train_data_batch_1.npz", images=images)
    np.save(root / "ok.npy", rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8))
    np.save(root / "float.npy", rng.random((8, 1, 8, 8), dtype=np.float32))
    np.save(root / "range.npy", np.full((8, 1, 8, 8), 300, np.int64))
    np.save(root / "flat.npy", rng.integers(0, 256, (8, 64), dtype=np.uint8))
    for name, sizes in (("images", [(8, 8)] * 2), ("mixed", [(8, 8), (9, 8)])):
        (root / name).mkdir()
        for i, size in enumerate(sizes):
            Image.new("L", size).save(root / name / f"{i}.png")
    (root / "junk_png").mkdir()
    (root / "junk_png" / "junk.png").write_bytes(rng.bytes(100))


def _garble(run: pathlib.Path, target: pathlib.Path, cut: bool) -> None:
    """A copy of `run` whose checkpoint files are all cut in half or overwritten."""
    shutil.copytree(run, target)
    for path in (target / "checkpoints").rglob("*"):
        if path.is_file() and path.stat().st_size:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2] if cut else bytes(255 - b for b in data))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, pathlib.Path]:
    return make_world(tmp_path_factory.mktemp("bad_input"))


def make_world(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """The fixtures, a run folder and its garbled and truncated copies under `root`."""
    _write_fixtures(root)
    # A run folder with checkpoints at steps 0 and 1 of the untrained state: what the rows
    # read of a run (its checkpoints and their config) without compiling a train step.
    run = root / "run"
    config = train.Config.from_yaml(root / "tiny.yaml")
    setup = train.setup(config, run)
    for step in (0, 1):
        setup.checkpointer.save(eqx.tree_at(lambda s: s.step, setup.state, jnp.asarray(step)))
    setup.checkpointer.close()
    config.to_yaml(run / "config.yaml")
    _garble(run, root / "garbled", cut=False)
    _garble(run, root / "truncated", cut=True)
    return {"root": root, "run": run, "tiny": root / "tiny.yaml"}


def _snapshot(root: pathlib.Path) -> dict[str, str]:
    return {
        str(path): hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.filterwarnings("ignore:Checkpoint at step")  # each garbled one, as it is skipped
@pytest.mark.parametrize("what, argv, fragment", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_refused_cleanly(world, capsys, what, argv, fragment):
    argv = [arg.format(**world) for arg in argv]
    if argv and argv[0] in ("train", "eval", "sample"):
        argv.append("--no-progress")
    shutil.rmtree(world["root"] / "new", ignore_errors=True)  # rows stay independent
    before = _snapshot(world["root"])
    capsys.readouterr()
    try:
        code = train.main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert fragment in err, err
    assert _snapshot(world["root"]) == before, "files changed on disk"


def test_batch_that_does_not_split_over_the_devices(world, tmp_path):
    """The one row that needs several devices: 2 CPU devices in a subprocess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    args = ["train", "--config", str(world["tiny"]), "--workdir", str(tmp_path / "new")]
    proc = subprocess.run(
        [sys.executable, "-m", "adaptive_diffusion", *args, "--set", "batch_size=7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "does not split over the 2 devices" in proc.stderr
    assert "--set batch_size=8" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_the_docs_table_lists_every_row():
    docs = pathlib.Path(__file__).parent.parent / "docs" / "reliability.md"
    section = docs.read_text().split("## Bad input, the table", 1)[1]
    table = re.findall(r"^\| (.+?) \|", section, flags=re.MULTILINE)
    assert [row[0] for row in ROWS] == [name for name in table if name not in ("input", "---")]


def test_fixtures_are_bad_in_one_way_only(world):
    """The folder and npz fixtures that the rows break are otherwise readable: the good
    ones load (so each row fails for its own reason)."""
    from adaptive_diffusion.data import ArraySource, ImageFolderSource

    assert len(ArraySource.from_file(world["root"] / "ok.npy", 256)) == 8
    assert len(ImageFolderSource(world["root"] / "images")) == 2
    assert os.path.getsize(world["root"] / "cifar_cut" / "data_batch_1") > 0
