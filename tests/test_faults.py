"""Faults during training: kills at random moments (some during an asynchronous checkpoint
write), a run folder that fills up or turns read-only mid-run, a write failure injected
into the checkpoint layer, and a data file that disappears.

What is checked is what the issue asks of a run: none loses more than the checkpoint in
flight, none resumes from a partial or corrupt checkpoint (a resumed run retraces the
losses of an uninterrupted one to the last bit), and every failure is reported with the
complete checkpoints it kept. The figures are in `docs/reliability.md`.
"""

import json
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from adaptive_diffusion import train

from . import runs


_RESUMED = re.compile(r"resumed from the checkpoint of step (\d+)")
_STOPPED = re.compile(
    r"adaptive-diffusion train: error: Training stopped at step (\d+) \(.+\)\. Kept: the "
    r"complete checkpoints on disk are steps \[([\d, ]+)\]"
)


def _complete(workdir: pathlib.Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _partial(workdir: pathlib.Path) -> set[str]:
    """The temporary folders of checkpoint writes (orbax renames each when complete)."""
    folder = workdir / "checkpoints"
    return {p.name for p in folder.iterdir() if "tmp" in p.name} if folder.is_dir() else set()


def _reached(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    return max((line["step"] for line in train.read_metrics(path)), default=0)


@pytest.mark.slow
def test_random_kills_lose_at_most_the_checkpoint_in_flight(tmp_path):
    # Eight SIGKILLs, each followed by --resume: at a random moment of the process's life
    # (startup, restore, training, evaluation, a checkpoint write), or as soon as a
    # checkpoint's temporary folder appears (inside an asynchronous write). Each resume
    # must restore the latest complete checkpoint on disk at the kill (never a partial
    # one, never a fallback), and the finished run must retrace an uninterrupted run's
    # losses to the last bit.
    config = runs.write_config(
        tmp_path / "tiny.yaml", steps=1500, checkpoint_every=100, eval_every=500
    )
    cache = tmp_path / "cache"
    args = ("train", "--config", str(config))
    reference = runs.cli(cache, *args, "--workdir", str(tmp_path / "ref"))
    workdir = tmp_path / "killed"
    rng = random.Random(0)
    kills = []
    resume: tuple[str, ...] = ()
    for kill in range(8):
        stale = _partial(workdir)  # left by an earlier kill (orbax removes them on saving)
        proc = runs.cli(cache, *args, "--workdir", str(workdir), *resume)
        born = time.monotonic()
        in_write = kill % 2 == 1
        moment = born + rng.uniform(4.0, 16.0)  # starting takes ~10 s, 100 steps ~0.5 s
        while proc.poll() is None:
            if _partial(workdir) - stale if in_write else time.monotonic() >= moment:
                break
            assert time.monotonic() < born + 120, "the run neither wrote nor ended in time"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, out  # killed, not ended
        restored = _RESUMED.search(out)
        if restored:  # the latest checkpoint complete on disk at the last kill
            assert int(restored.group(1)) == kills[-1]["complete"][-1], out
        assert "could not be read" not in out and "Traceback" not in out, out
        kills.append(
            {
                "seconds": time.monotonic() - born,
                "in_write": bool(_partial(workdir) - stale),
                "partial": sorted(_partial(workdir)),
                "complete": _complete(workdir),
                "reached": _reached(workdir) if (workdir / "metrics.jsonl").exists() else 0,
            }
        )
        resume = ("--resume",)
    out = runs.finish(runs.cli(cache, *args, "--workdir", str(workdir), *resume))
    final = kills[-1]["complete"]
    assert _RESUMED.search(out).group(1) == str(final[-1]) if final else not _RESUMED.search(out)
    runs.finish(reference)
    expected, got = runs.losses(tmp_path / "ref"), runs.losses(workdir)
    assert sorted(got) == list(range(1, 1501))
    assert got == expected  # no partial, corrupt or stale state came back

    for k in kills:  # steps lost: from the last step logged to the checkpoint restored
        k["lost"] = k["reached"] - (k["complete"][-1] if k["complete"] else 0)
        # At most the steps since the last checkpoint started, plus the interval before it
        # if that checkpoint was still being written.
        assert k["lost"] <= k["reached"] % 100 + 100, kills
    assert sum(k["in_write"] for k in kills) >= 1, kills  # some kills hit a write
    (tmp_path / "kills.json").write_text(json.dumps(kills, indent=1))  # the figures


def _can_mount_tmpfs(tmp_path: pathlib.Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    command = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"]
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_FAULTS = {
    "full": ("dd if=/dev/zero of=$MNT/fill bs=64k status=none", "rm $MNT/fill"),
    # A read-only bind mount over the run folder: files opened from then on are read-only
    # (a remount of the tmpfs itself is refused while the run holds files open for
    # writing; `--bind -o ro` attaches the mount already read-only, so the run cannot
    # open a file on it in between).
    "read-only": ("mount --bind -o ro $MNT/run $MNT/run", "umount $MNT/run"),
}


_SCRIPT = """
set -u
mount -t tmpfs -o size=32m tmpfs $MNT
"$PY" -m adaptive_diffusion train --config $CONFIG --workdir $MNT/run --no-progress \
    > $OUT/first.txt 2>&1 &
pid=$!
while [ ! -d $MNT/run/checkpoints/50 ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done
{fault} || true
wait $pid; echo $? > $OUT/first.rc
cp -a $MNT/run $OUT/kept
"$PY" -m adaptive_diffusion train --config $CONFIG --workdir $MNT/run/new --no-progress \
    > $OUT/start.txt 2>&1
echo $? > $OUT/start.rc
{lift}
"$PY" -m adaptive_diffusion train --config $CONFIG --workdir $MNT/run --no-progress \
    --resume > $OUT/second.txt 2>&1
echo $? > $OUT/second.rc
cp -a $MNT/run $OUT/final
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(_FAULTS))
def test_run_folder_that_fills_up_or_turns_read_only(tmp_path, fault):
    # The run folder is a 32 MiB tmpfs mounted in a user namespace; after the checkpoint
    # of step 50 it is filled up or remounted read-only. The run must stop with exit 1,
    # naming the complete checkpoints on disk (and no checkpoint may be partial); once the
    # fault is lifted, --resume must restore the latest of them and finish with the
    # losses of an uninterrupted run. Meanwhile a new run in the failed folder is refused
    # before any work (exit 2), leaving no folder behind.
    if shutil.which("unshare") is None or not _can_mount_tmpfs(tmp_path):
        pytest.skip("no user namespace to mount a tmpfs in (the injected test covers this)")
    config = runs.write_config(tmp_path / "tiny.yaml", steps=300, checkpoint_every=25)
    cache = tmp_path / "cache"
    reference = runs.cli(cache, "train", "--config", str(config), "--workdir", str(tmp_path / "r"))
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "mnt").mkdir()
    inject, lift = _FAULTS[fault]
    variables = {"MNT": str(tmp_path / "mnt"), "OUT": str(out), "CONFIG": str(config)}
    script = _SCRIPT.format(fault=inject, lift=lift)
    subprocess.run(
        ["unshare", "-rm", "bash", "-c", script],
        env=runs.env(cache, PY=sys.executable, **variables),
        timeout=300,
        check=True,
    )
    runs.finish(reference)  # before any assertion, so that no failure leaves it running
    first = (out / "first.txt").read_text()
    assert (out / "first.rc").read_text().strip() == "1", first
    # The run's own line: orbax's background threads may log after it.
    stopped = _STOPPED.search(first)
    assert stopped, first
    kept = [int(s) for s in stopped.group(2).split(",")]
    assert kept == _complete(out / "kept") and kept[-1] >= 50, first
    start = (out / "start.txt").read_text()  # a new run in the failed folder: refused
    assert (out / "start.rc").read_text().strip() == "2", start
    assert "cannot be written" in start and "Traceback" not in start, start
    assert not (out / "final" / "new").exists()
    second = (out / "second.txt").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second
    assert _RESUMED.search(second).group(1) == str(kept[-1]), second
    assert runs.losses(out / "final") == runs.losses(tmp_path / "r")


@pytest.mark.slow
def test_injected_write_failure_stops_with_what_was_kept(tmp_path, monkeypatch):
    # Where no tmpfs can be mounted: the write of the checkpoint of step 20 fails inside
    # orbax (as tensorstore reports a full disk), and the run stops there, naming the
    # complete checkpoints; resumed without the fault, it restores step 10 and finishes.
    config = train.Config.from_dict(runs.TINY).with_overrides(["steps=30"])
    save = ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
        if step == 20:
            raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    with pytest.raises(train.TrainingError) as stopped:
        train.train(config, tmp_path, progress=False, pictures=False)
    assert (stopped.value.step, stopped.value.kept) == (20, [10])
    message = str(stopped.value)
    assert message.startswith("Training stopped at step 20 (Writing a checkpoint to ")
    assert "No space left on device" in message
    assert "the complete checkpoints on disk are steps [10]" in message
    assert "then continue with --resume (from step 10)" in message
    assert sorted(runs.losses(tmp_path)) == list(range(1, 21))

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    state = train.train(config, tmp_path, resume=True, progress=False, pictures=False)
    assert int(state.step) == 30
    assert sorted(runs.losses(tmp_path)) == list(range(1, 31))
    assert _complete(tmp_path) == [10, 20, 30]


@pytest.mark.slow
def test_data_file_that_disappears(tmp_path):
    # Every source reads its files once, when the run starts: a data file removed mid-run
    # does not touch the run. A resume without it is refused with the file named, and
    # leaves the checkpoints as they were.
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    data = tmp_path / "train.npy"
    np.save(data, images)
    data_config = {"source": "npz", "path": str(data), "test_path": str(data)}
    config = runs.write_config(
        tmp_path / "tiny.yaml", steps=300, checkpoint_every=25, data=data_config
    )
    cache = tmp_path / "cache"
    workdir = tmp_path / "run"
    args = ("train", "--config", str(config), "--workdir", str(workdir))
    proc = runs.cli(cache, *args)
    deadline = time.monotonic() + 180
    while not (workdir / "checkpoints" / "50").is_dir():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint at step 50 in time"
        time.sleep(0.01)
    data.unlink()
    runs.finish(proc)
    assert sorted(runs.losses(workdir)) == list(range(1, 301))
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}

    refused = runs.cli(cache, *args, "--resume")
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2, out
    assert str(data) in out and "Traceback" not in out, out
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
