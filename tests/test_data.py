"""Data sources on fixtures written in their exact on-disk formats, and the grain pipeline."""

import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from adaptive_diffusion._discrete import from_levels
from adaptive_diffusion.data import (
    ArraySource,
    CIFAR10Source,
    DataError,
    DigitsSource,
    ImageFolderSource,
    ImageNet32Source,
    SampleImagePatchesSource,
    batch_pipeline,
    image_pipeline,
    levels_to_centres,
)


def _levels(x, num_levels):
    """Integer levels of bin centres (the inverse of the pipeline's mapping)."""
    return np.round((np.asarray(x, np.float64) + 1.0) * num_levels / 2.0 - 0.5).astype(int)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


# ---------------------------------------------------------------------------------------
# Fixtures in the official formats


def _write_cifar_batch(path, data, *, key=b"data"):
    # The official batches are protocol-2 pickles of dicts with bytes keys.
    batch = {
        b"batch_label": b"fixture",
        b"labels": list(range(len(data))),
        key: data,
        b"filenames": [b"%d.png" % i for i in range(len(data))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    rows = {}
    for name, n in [(f"data_batch_{i}", i) for i in range(1, 6)] + [("test_batch", 3)]:
        rows[name] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _write_cifar_batch(tmp_path / name, rows[name])
    return tmp_path, rows


def _write_imagenet(path, data, *, compressed=False, **extra):
    save = np.savez_compressed if compressed else np.savez
    save(path, data=data, labels=np.arange(1, len(data) + 1), **extra)


@pytest.fixture
def imagenet_dir(tmp_path):
    rng = np.random.default_rng(1)
    rows = {}
    for b in range(1, 11):
        name = f"train_data_batch_{b}.npz"
        rows[name] = rng.integers(0, 256, (b % 3 + 1, 3072), dtype=np.uint8)
        _write_imagenet(tmp_path / name, rows[name], compressed=b % 2 == 0, mean=np.zeros(3072))
    rows["val_data.npz"] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    _write_imagenet(tmp_path / "val_data.npz", rows["val_data.npz"])
    return tmp_path, rows


# ---------------------------------------------------------------------------------------
# Sources


def test_digits():
    train, test = DigitsSource("train"), DigitsSource("test")
    assert len(train) == 1500 and len(test) == 297
    assert train.shape == test.shape == (1, 8, 8)
    assert train.images.dtype == np.uint8 and train.num_levels == 17
    assert train.images.max() == 16 and train.images.min() == 0
    assert not set(train.indices) & set(test.indices)
    assert sorted([*train.indices, *test.indices]) == list(range(1797))
    np.testing.assert_array_equal(DigitsSource("test").images, test.images)
    other = DigitsSource("test", seed=1, num_test=100)
    assert len(other) == 100 and not np.array_equal(other.indices, test.indices[:100])
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(test.labels, load_digits().target[test.indices])
    assert set(train.labels) == set(range(10))


@pytest.mark.parametrize("patch_size", [16, 32])
def test_sample_image_patches(patch_size):
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    train = SampleImagePatchesSource("train", patch_size=patch_size)
    test = SampleImagePatchesSource("test", patch_size=patch_size)
    counts = {16: (1560, 468), 32: (390, 104)}[patch_size]
    assert (len(train), len(test)) == counts
    for source in (train, test):
        assert source.shape == (3, patch_size, patch_size)
        assert source.images.dtype == np.uint8 and source.num_levels == 256
        # Every patch is the crop of its photo at its recorded origin.
        for i in (0, len(source) // 2, len(source) - 1):
            p, row, col = source.origins[i]
            crop = photos[p][row : row + patch_size, col : col + patch_size]
            np.testing.assert_array_equal(source.images[i], crop.transpose(2, 0, 1))
    # Disjoint regions: in each photo, the last train column is more than `guard` columns
    # left of the first test column.
    for p in range(len(photos)):
        train_cols = train.origins[train.origins[:, 0] == p, 2]
        test_cols = test.origins[test.origins[:, 0] == p, 2]
        assert train_cols.max() + patch_size - 1 + train.guard < test_cols.min()
    # Labels are the source region 4 * photo + quarter of the height; both splits hold all.
    for source in (train, test):
        height = np.asarray([photos[p].shape[0] for p in source.origins[:, 0]])
        expected = 4 * source.origins[:, 0] + source.origins[:, 1] // (height / 4)
        np.testing.assert_array_equal(source.labels, expected)
        assert set(source.labels) == set(range(8))
    # Non-overlapping by default; a smaller stride gives overlapping, more patches.
    assert len(SampleImagePatchesSource("test", patch_size=16, stride=8)) > 3 * len(test) // 2
    with pytest.raises(ValueError, match="too small"):
        SampleImagePatchesSource("test", patch_size=32, test_fraction=0.05)


def test_array_source(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 5, (6, 2, 3, 4))
    source = ArraySource(images, num_levels=5)
    assert source.images.dtype == np.uint8 and source.shape == (2, 3, 4) and len(source) == 6
    np.testing.assert_array_equal(source[3], images[3])
    np.testing.assert_array_equal(source[np.array([4, 1])], images[[4, 1]])

    np.save(tmp_path / "images.npy", images)
    np.savez(tmp_path / "images.npz", x=images)
    np.testing.assert_array_equal(ArraySource.from_file(tmp_path / "images.npy", 5).images, images)
    from_npz = ArraySource.from_file(tmp_path / "images.npz", 5, key="x")
    np.testing.assert_array_equal(from_npz.images, images)

    with pytest.raises(ValueError, match=r"shape \(6, 24\); expected 4 axes \(N, C, H, W\)"):
        ArraySource(images.reshape(6, 24), 5)
    with pytest.raises(ValueError, match="dtype float32; expected integer levels"):
        ArraySource(images.astype(np.float32), 5)
    with pytest.raises(ValueError, match=r"values in \[0, 4\]; expected levels 0 .. 3"):
        ArraySource(images, 4)
    with pytest.raises(ValueError, match=r"num_levels must lie in \[2, 256\]"):
        ArraySource(images, 300)
    with pytest.raises(FileNotFoundError, match="missing.npy' does not exist"):
        ArraySource.from_file(tmp_path / "missing.npy", 5)
    with pytest.raises(ValueError, match=r"images.npz' has entries \['x'\]; expected 'images'"):
        ArraySource.from_file(tmp_path / "images.npz", 5)
    np.save(tmp_path / "flat.npy", images.reshape(6, -1))
    with pytest.raises(ValueError, match=r"flat.npy'.*expected 4 axes"):
        ArraySource.from_file(tmp_path / "flat.npy", 5)


def test_cifar10(cifar_dir):
    directory, rows = cifar_dir
    train, test = CIFAR10Source(directory), CIFAR10Source(directory, "test")
    assert len(train) == 1 + 2 + 3 + 4 + 5 and len(test) == 3
    assert train.shape == (3, 32, 32) and train.num_levels == 256
    expected = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images.reshape(len(train), -1), expected)
    # Row layout: the red plane (row-major), then green, then blue.
    row = rows["test_batch"][2]
    np.testing.assert_array_equal(test[2][0, 1, :], row[32:64])
    np.testing.assert_array_equal(test[2][2, 31, 31], row[3071])
    # The folder into which the archive was extracted also works.
    parent = directory / "extracted"
    (parent / "cifar-10-batches-py").mkdir(parents=True)
    _write_cifar_batch(parent / "cifar-10-batches-py" / "test_batch", rows["test_batch"])
    np.testing.assert_array_equal(CIFAR10Source(parent, "test").images, test.images)


def test_cifar10_errors(cifar_dir):
    directory, rows = cifar_dir
    (directory / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4' does not exist; expected a CIFAR"):
        CIFAR10Source(directory)
    _write_cifar_batch(directory / "test_batch", rows["test_batch"].reshape(3, 3, 1024))
    with pytest.raises(
        ValueError, match=r"test_batch' has shape \(3, 3, 1024\); expected \(N, 3072"
    ):
        CIFAR10Source(directory, "test")
    _write_cifar_batch(directory / "test_batch", rows["test_batch"].astype(np.int64))
    with pytest.raises(ValueError, match="test_batch' has dtype int64; expected uint8"):
        CIFAR10Source(directory, "test")
    _write_cifar_batch(directory / "test_batch", rows["test_batch"], key=b"images")
    with pytest.raises(ValueError, match="test_batch' holds a dict without a b'data' entry"):
        CIFAR10Source(directory, "test")
    (directory / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch' is not a readable pickle"):
        CIFAR10Source(directory, "test")


def test_cli_names_a_corrupt_data_file_without_a_traceback(cifar_dir, capsys):
    # The training command on CIFAR-10 with a corrupt batch: exit 2, the message names the
    # file and what it should hold, and no traceback is printed.
    from adaptive_diffusion import train

    directory, _ = cifar_dir
    (directory / "data_batch_1").write_bytes(b"\x80\x02garbled")
    args = ["train", "--config", "cifar10", "--set", f"data.path={directory}"]
    workdir = directory / "run"
    assert train.main([*args, "--workdir", str(workdir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1' is not a readable pickle" in err and "Traceback" not in err, err


def test_imagenet32(imagenet_dir):
    directory, rows = imagenet_dir
    train = ImageNet32Source(directory)
    expected = np.concatenate([rows[f"train_data_batch_{b}.npz"] for b in range(1, 11)])
    assert train.shape == (3, 32, 32) and train.num_levels == 256
    np.testing.assert_array_equal(train.images.reshape(len(train), -1), expected)
    some = ImageNet32Source(directory, train_batches=(3, 2))
    np.testing.assert_array_equal(
        some.images.reshape(len(some), -1),
        np.concatenate([rows["train_data_batch_3.npz"], rows["train_data_batch_2.npz"]]),
    )
    val = ImageNet32Source(directory, "validation")
    np.testing.assert_array_equal(val[1][1].ravel(), rows["val_data.npz"][1, 1024:2048])


def test_imagenet32_errors(imagenet_dir):
    directory, rows = imagenet_dir
    (directory / "train_data_batch_7.npz").unlink()
    with pytest.raises(FileNotFoundError, match="train_data_batch_7.npz' does not exist"):
        ImageNet32Source(directory)
    with pytest.raises(ValueError, match="train_batches must be a non-empty selection"):
        ImageNet32Source(directory, train_batches=(0,))
    val = rows["val_data.npz"]
    _write_imagenet(directory / "val_data.npz", val.reshape(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"'data' in .*val_data.npz' has shape \(4, 3, 32, 32\)"):
        ImageNet32Source(directory, "validation")
    _write_imagenet(directory / "val_data.npz", val.astype(np.float32), compressed=True)
    with pytest.raises(ValueError, match="val_data.npz' has dtype float32; expected uint8"):
        ImageNet32Source(directory, "validation")
    np.savez(directory / "val_data.npz", images=val)
    with pytest.raises(ValueError, match=r"val_data.npz' has entries \['images'\]; expected an"):
        ImageNet32Source(directory, "validation")
    (directory / "val_data.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="val_data.npz' is not an npz"):
        ImageNet32Source(directory, "validation")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb[1]).save(tmp_path / "b.png")
    Image.fromarray(rgb[0]).save(tmp_path / "a.PNG")
    Image.fromarray(rgb[2]).convert("RGBA").save(tmp_path / "c.png")  # alpha is dropped
    (tmp_path / "notes.txt").write_text("not an image")
    source = ImageFolderSource(tmp_path)
    assert source.shape == (3, 5, 7) and source.num_levels == 256
    assert [f.rsplit("/", 1)[-1] for f in source.files] == ["a.PNG", "b.png", "c.png"]
    np.testing.assert_array_equal(source.images, rgb.transpose(0, 3, 1, 2))
    grey = ImageFolderSource(tmp_path, channels=1)
    assert grey.shape == (1, 5, 7)

    # JPEG (Pillow): lossy, so a smooth image comes back close, not equal.
    jpeg_dir = tmp_path / "photos" / "class_a"
    jpeg_dir.mkdir(parents=True)
    smooth = np.broadcast_to(np.linspace(0, 255, 16, dtype=np.uint8), (16, 16))
    smooth = np.stack([smooth, smooth.T, np.full((16, 16), 128, np.uint8)], axis=-1)
    Image.fromarray(smooth).save(jpeg_dir / "x.jpg", quality=95)
    Image.fromarray(smooth).save(jpeg_dir / "y.jpeg", quality=95)
    with pytest.raises(ValueError, match="photos' holds no image files.*recursive=True"):
        ImageFolderSource(tmp_path / "photos")
    jpegs = ImageFolderSource(tmp_path / "photos", recursive=True)
    assert jpegs.images.shape == (2, 3, 16, 16)
    error = np.abs(jpegs.images.astype(int) - smooth.transpose(2, 0, 1)).mean()
    assert error < 3.0


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere' is not a folder"):
        ImageFolderSource(tmp_path / "nowhere")
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"holds no image files; expected files ending in \.png"):
        ImageFolderSource(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 5)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b.png' is 4 x 5 \(width x height\); expected 4 x 4"):
        ImageFolderSource(tmp_path)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b.png' could not be read as an image"):
        ImageFolderSource(tmp_path)


# ---------------------------------------------------------------------------------------
# Pipeline


N = 20


@pytest.fixture(scope="module")
def indexed():
    # Image i is the row (i, 100 + i): it names its index, and a flip swaps the two pixels.
    i = np.arange(N)
    return ArraySource(np.stack([i, 100 + i], axis=-1).reshape(N, 1, 1, 2), num_levels=128)


def _ids(batch):
    """Index of each image in `indexed` (negative when the image came back flipped)."""
    k = _levels(batch, 128).reshape(len(batch), 2)
    flipped = k[:, 0] >= 100
    return np.where(flipped, -k[:, 1] - 1, k[:, 0])


def _unflipped(ids):
    return np.where(ids < 0, -ids - 1, ids)


def test_levels_to_centres_match_from_levels():
    for num_levels in (2, 17, 256):
        k = np.arange(num_levels, dtype=np.uint8)
        centres = levels_to_centres(k, num_levels)
        assert centres.dtype == np.float32
        exact = -1.0 + (2.0 * np.arange(num_levels) + 1.0) / num_levels
        np.testing.assert_allclose(centres, exact, rtol=0, atol=2**-24)  # correctly rounded
        # XLA may divide by multiplying with the reciprocal: at most one ulp apart.
        jax_centres = np.asarray(from_levels(jnp.asarray(k, jnp.int32), num_levels))
        np.testing.assert_allclose(centres, jax_centres, rtol=0, atol=2**-23)


def test_pipeline_values_on_grid():
    source = DigitsSource("test")
    batch = next(
        iter(image_pipeline(source, global_batch_size=8, process_count=1, process_index=0))
    )
    assert batch.shape == (8, 1, 8, 8) and batch.dtype == np.float32
    k = _levels(batch, 17)
    np.testing.assert_array_equal(batch, levels_to_centres(k.astype(np.uint8), 17))
    assert np.all((-1 < batch) & (batch < 1))


def test_pipeline_shuffle_is_seeded_and_epochs_are_permutations(indexed):
    def ids(seed, steps=10):
        ds = image_pipeline(indexed, global_batch_size=4, seed=seed, process_count=1)
        return np.concatenate([_ids(b) for b in _take(iter(ds), steps)])

    first = ids(seed=7)
    np.testing.assert_array_equal(first, ids(seed=7))
    assert not np.array_equal(first, ids(seed=8))
    # Two epochs of 20, each a permutation, and shuffled differently.
    assert sorted(first[:N]) == sorted(first[N:]) == list(range(N))
    assert not np.array_equal(first[:N], first[N:])
    assert not np.array_equal(first[:N], np.arange(N))


def test_pipeline_single_pass_and_remainder(indexed):
    def batches(**kwargs):
        ds = image_pipeline(indexed, num_epochs=1, shuffle=False, process_index=0, **kwargs)
        return [_ids(b) for b in ds]

    # One pass in source order; the last global batch is partial.
    out = batches(global_batch_size=8, process_count=1)
    assert [len(b) for b in out] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(out), np.arange(N))
    assert [len(b) for b in batches(global_batch_size=8, drop_remainder=True, process_count=1)] == [
        8,
        8,
    ]
    # Two hosts share the last 4 equally (2 each), ...
    assert [len(b) for b in batches(global_batch_size=8, process_count=2)] == [4, 4, 2]
    # ... but not 3 hosts a last batch of 2 (20 = 6 + 6 + 6 + 2) unless it is dropped.
    with pytest.raises(ValueError, match="holds 2 examples, which 3 processes cannot share"):
        batches(global_batch_size=6, process_count=3)
    assert [len(b) for b in batches(global_batch_size=6, process_count=3, drop_remainder=True)] == [
        2,
        2,
        2,
    ]


@pytest.mark.parametrize("num_epochs", [None, 1])
def test_pipeline_hosts_split_the_global_batch(indexed, num_epochs):
    def stream(process_index, process_count):
        ds = image_pipeline(
            indexed,
            global_batch_size=6,
            seed=3,
            flip=True,
            num_epochs=num_epochs,
            drop_remainder=True,
            process_index=process_index,
            process_count=process_count,
        )
        return [_ids(b) for b in _take(iter(ds), 3)]

    single = stream(0, 1)
    hosts = [stream(p, 3) for p in range(3)]
    for step in range(3):
        assert all(len(h[step]) == 2 for h in hosts)
        # Host p holds positions 2p, 2p + 1 of each global batch of 6.
        together = np.concatenate([h[step] for h in hosts])
        np.testing.assert_array_equal(together, single[step])
    # Within a step, the hosts hold different examples.
    assert len(set(_unflipped(np.concatenate([h[0] for h in hosts])))) == 6

    with pytest.raises(ValueError, match="global_batch_size 6 must be a positive multiple"):
        image_pipeline(indexed, global_batch_size=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index must lie in"):
        image_pipeline(indexed, global_batch_size=6, process_index=3, process_count=3)


def test_batch_pipeline_streams_the_given_batches_split_over_hosts(indexed):
    batches = [np.array([5, 0, 3, 3]), np.array([1, 2, 9, 0])]
    single = [_ids(b) for b in batch_pipeline(indexed, batches)]
    np.testing.assert_array_equal(np.stack(single), np.stack(batches))
    for p in range(2):
        host = [_ids(b) for b in batch_pipeline(indexed, batches, process_index=p, process_count=2)]
        np.testing.assert_array_equal(np.stack(host), np.stack(batches)[:, 2 * p : 2 * p + 2])
    with pytest.raises(ValueError, match="split equally over the 3 processes"):
        batch_pipeline(indexed, batches, process_index=0, process_count=3)


def test_pipeline_flip(indexed):
    def ids(**kwargs):
        ds = image_pipeline(indexed, global_batch_size=N, num_epochs=1, shuffle=False, **kwargs)
        return _ids(next(iter(ds)))

    np.testing.assert_array_equal(ids(), np.arange(N))  # off by default
    flipped = ids(flip=True, seed=1)
    np.testing.assert_array_equal(_unflipped(flipped), np.arange(N))
    assert 0 < np.sum(flipped < 0) < N
    np.testing.assert_array_equal(flipped, ids(flip=True, seed=1))
    assert not np.array_equal(flipped, ids(flip=True, seed=2))


@pytest.mark.parametrize("read_threads", [0, 2])
def test_pipeline_state_round_trip(indexed, read_threads):
    ds = image_pipeline(
        indexed,
        global_batch_size=6,
        seed=5,
        flip=True,
        read_threads=read_threads,
        process_index=1,
        process_count=2,
    )
    iterator = iter(ds)
    _take(iterator, 5)  # into the second epoch
    state = iterator.get_state()
    expected = _take(iterator, 6)

    resumed = iter(ds)
    resumed.set_state(state)
    for a, b in zip(_take(resumed, 6), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # A state restored into a fresh pipeline built the same way resumes too.
    again = iter(
        image_pipeline(
            indexed, global_batch_size=6, seed=5, flip=True, process_index=1, process_count=2
        )
    )
    again.set_state(state)
    np.testing.assert_array_equal(next(again), expected[0])
