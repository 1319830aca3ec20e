import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from adaptive_diffusion import train


# ---------------------------------------------------------------------------- config


def test_config_yaml_round_trip(tmp_path):
    config = train.load_config(
        None, ["optimizer.lr=3e-4", "steps=7", "data.source=npz", "data.path=/x.npz"]
    )
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    assert train.Config.from_yaml(path) == config
    assert train.Config.from_dict(config.to_dict()) == config
    assert config.to_dict()["optimizer"]["lr"] == 3e-4


def test_config_yaml_values_and_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    # `1e-3` without a decimal point is a string to PyYAML; a float field still takes it.
    path.write_text("optimizer:\n  lr: 1e-3\n  clip_norm: 2\nnetwork:\n  kind: unet\nseed: 3\n")
    config = train.load_config(
        path, ["optimizer.lr=1e-4", "batch_size=32", "process.schedule=cosine", "data.path=none"]
    )
    assert config.optimizer.lr == 1e-4 and isinstance(config.optimizer.lr, float)
    assert config.optimizer.clip_norm == 2.0 and isinstance(config.optimizer.clip_norm, float)
    assert config.batch_size == 32 and isinstance(config.batch_size, int)
    assert config.process.schedule == "cosine"
    assert config.network.kind == "unet"
    assert config.seed == 3
    assert config.data.path is None
    assert config.mesh.data == -1  # default kept
    assert train.load_config(None, ["mesh.data=-1", "data.path=a/b"]).data.path == "a/b"
    assert config.network.unroll is None
    unet = train.load_config(path, ["network.unroll=false", "network.n_layers=1"])
    assert train.build_model(unet, (1, 8, 8), 256, key=jr.key(0)).denoiser.unroll is False
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert train.Config.from_yaml(empty) == train.Config()
    empty.write_text("optimizer:\n")
    assert train.Config.from_yaml(empty) == train.Config()


@pytest.mark.parametrize(
    "override, match",
    [
        ("optimizer.lrr=1", "'optimizer.lrr'.*lr, warmup_steps"),
        ("bogus=1", "'bogus'.*batch_size"),
        ("nosection.lr=1", "'nosection'"),
        ("optimizer=1", "section"),
        ("steps", "key=value"),
    ],
)
def test_config_unknown_override(override, match):
    with pytest.raises(ValueError, match=match):
        train.load_config(None, [override])


def test_config_unknown_yaml_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optimizer:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="'optimizer.learning_rate'.*valid keys.*lr"):
        train.Config.from_yaml(path)


@pytest.mark.parametrize(
    "override",
    ["steps=1.5", "steps=abc", "optimizer.lr=fast", "process.schedule=quadratic", "seed=none"],
)
def test_config_bad_override_type(override):
    with pytest.raises(ValueError, match=override.split("=")[0]):
        train.load_config(None, [override])


@pytest.mark.parametrize(
    "data",
    [
        {"steps": 1.5},
        {"steps": True},
        {"steps": "10"},
        {"optimizer": {"lr": "fast"}},
        {"optimizer": {"lr": [1]}},
        {"data": {"path": 3}},
        {"network": {"kind": "resnet"}},
        {"optimizer": 1.0},
    ],
)
def test_config_bad_yaml_type(data):
    with pytest.raises(ValueError):
        train.Config.from_dict(data)


def test_config_bad_value():
    with pytest.raises(ValueError, match="batch_size"):
        train.load_config(None, ["batch_size=0"])


# ------------------------------------------------------------------ optimizer and EMA


def test_ema_update():
    ema = {"w": jnp.array([1.0, 2.0]), "n": jnp.array(3, jnp.int32), "f": jnp.tanh}
    params = {"w": jnp.array([3.0, -2.0]), "n": jnp.array(4, jnp.int32), "f": jnp.tanh}
    out = train.ema_update(ema, params, 0.75)
    # 0.75 * ema + 0.25 * params; integer leaves and non-arrays are taken from `params`.
    np.testing.assert_allclose(out["w"], [1.5, 1.0], rtol=1e-6)
    assert int(out["n"]) == 4 and out["f"] is jnp.tanh
    np.testing.assert_array_equal(train.ema_update(ema, params, 0.0)["w"], params["w"])
    np.testing.assert_array_equal(train.ema_update(ema, params, 1.0)["w"], ema["w"])
    jitted = jax.jit(train.ema_update)(ema["w"], params["w"], jnp.asarray(0.75))
    np.testing.assert_allclose(jitted, [1.5, 1.0], rtol=1e-6)


def test_warmup_cosine_schedule():
    config = train.OptimizerConfig(lr=1e-2, warmup_steps=10)
    schedule = train.make_schedule(config, steps=110)
    values = [float(np.asarray(schedule(s))) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(values, [0.0, 5e-3, 1e-2, 5e-3, 0.0, 0.0], atol=1e-8, rtol=1e-5)
    # Warmup is capped below the run length, so a short run still reaches the peak.
    short = train.make_schedule(config, steps=4)
    np.testing.assert_allclose(np.asarray(short(3)), 1e-2, rtol=1e-6)


def test_optimizer_warmup_and_decay_mask():
    config = train.OptimizerConfig(lr=1e-1, warmup_steps=2, weight_decay=0.5, clip_norm=1.0)
    optimizer = train.make_optimizer(config, steps=10)
    # A layer's kernel is decayed; its bias, a norm's scale, a matrix that is not a layer's
    # kernel (a learned process's parameters) and the 2-d biases of blocks stacked for a scan
    # are not.
    linear = eqx.nn.Linear(2, 2, key=jr.key(0))
    stacked = eqx.filter_vmap(lambda k: eqx.nn.Linear(2, 2, key=k))(jr.split(jr.key(1), 3))
    params = {
        "linear": eqx.tree_at(
            lambda m: (m.weight, m.bias), linear, (jnp.ones((2, 2)), jnp.ones(2))
        ),
        "norm": eqx.nn.LayerNorm(2),
        "process": jnp.ones((2, 2)),
        "stacked": eqx.tree_at(
            lambda m: (m.weight, m.bias), stacked, (jnp.ones((3, 2, 2)), jnp.ones((3, 2)))
        ),
    }
    params = eqx.filter(params, eqx.is_inexact_array)
    state = optimizer.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
    updates, state = optimizer.update(grads, state, params)
    # Step 0 of the warmup has learning rate 0.
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, state = optimizer.update(zero, state, params)
    # Step 1 (lr 0.05): with zero gradient only Adam's momentum (the same for every leaf, all
    # of whose gradients were 100) and the weight decay (0.05 * 0.5 * p) act.
    momentum = np.asarray(updates["process"])[0, 0]
    decay = -0.05 * 0.5
    np.testing.assert_allclose(updates["linear"].weight, momentum + decay, rtol=1e-5)
    np.testing.assert_allclose(updates["stacked"].weight, momentum + decay, rtol=1e-5)
    for undecayed in (
        updates["linear"].bias,
        updates["norm"].weight,
        updates["norm"].bias,
        updates["process"],
        updates["stacked"].bias,
    ):
        np.testing.assert_allclose(undecayed, momentum, rtol=1e-5)


# --------------------------------------------------------------------- sharded step

_SHARDED_STEP = textwrap.dedent(
    """
    import json

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import adaptive_diffusion as ad
    from adaptive_diffusion import train
    from adaptive_diffusion.data import DigitsSource, levels_to_centres
    from adaptive_diffusion.nn import MLPDenoiser

    assert len(jax.devices()) == 8, jax.devices()
    process = ad.VP(ad.LinearSchedule())
    xs = levels_to_centres(DigitsSource("train").images[:16], 17)


    def loss_fn(model, batch, key):
        return jnp.mean(ad.batch_nelbo(process, model, batch, key=key, num_levels=17).total)


    # No warmup, so that the first step moves the parameters.
    optimizer = train.make_optimizer(train.OptimizerConfig(lr=1e-3, warmup_steps=0), steps=10)


    def run(data_size):
        mesh = train.make_mesh(data_size)
        model = MLPDenoiser((1, 8, 8), key=jax.random.key(0), width=32, depth=2)
        state = train.replicate(mesh, train.init_state(model, optimizer, jax.random.key(1)))
        step = train.make_train_step(loss_fn, optimizer, mesh, ema_decay=0.9)
        batch = train.shard_batch(mesh, xs)
        assert len(batch.sharding.device_set) == data_size
        assert batch.addressable_shards[0].data.shape == (16 // data_size, 1, 8, 8)
        state, metrics = step(state, batch)
        assert not bool(metrics["skipped"]) and int(state.nonfinite_count) == 0
        leaves = jax.tree.leaves(eqx.filter((state.model, state.ema), eqx.is_array))
        for leaf in leaves:
            assert leaf.sharding.is_fully_replicated
            assert len(leaf.sharding.device_set) == data_size
        return {
            "loss": float(metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]),
            "params": [np.asarray(leaf).ravel().tolist() for leaf in leaves],
        }


    print(json.dumps({"sharded": run(8), "single": run(1)}))
    """
)


@pytest.mark.slow
def test_sharded_step_matches_single_device():
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SHARDED_STEP],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    sharded, single = out["sharded"], out["single"]
    # Same inputs, same keys, same program; the only difference is the order of the
    # floating-point reductions (per-device partial sums and an all-reduce over 8 devices
    # instead of one sum), which moves float32 results by a few ulps. The atol covers
    # entries of the zero-initialised output layer, whose first Adam step is ~lr * sign(g).
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(sharded["grad_norm"], single["grad_norm"], rtol=1e-5)
    assert len(sharded["params"]) == len(single["params"])
    for a, b in zip(sharded["params"], single["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------- non-finite steps


def _snapshot(tree):
    return [np.array(leaf) for leaf in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def test_nonfinite_step_is_skipped(getkey):
    mesh = train.make_mesh(1)
    model = eqx.nn.MLP(3, 1, width_size=8, depth=1, key=getkey())

    def loss_fn(model, batch, key):
        x, y = batch
        noise = 0.01 * jax.random.normal(key, x.shape)
        return jnp.mean((jax.vmap(model)(x + noise)[:, 0] - y) ** 2)

    optimizer = train.make_optimizer(train.OptimizerConfig(lr=1e-2, warmup_steps=0), steps=100)
    state = train.replicate(mesh, train.init_state(model, optimizer, getkey()))
    step = train.make_train_step(loss_fn, optimizer, mesh, ema_decay=0.5)
    x = np.asarray(jax.random.normal(getkey(), (4, 3)))
    y = np.ones(4, np.float32)
    good = (x, y)
    bad_x = x.copy()
    bad_x[1, 2] = np.nan

    state, metrics = step(state, train.shard_batch(mesh, good))
    assert not bool(metrics["skipped"])
    before = _snapshot((state.model, state.opt_state, state.ema))

    for expected in (1, 2, 3):
        state, metrics = step(state, train.shard_batch(mesh, (bad_x, y)))
        assert bool(metrics["skipped"])
        assert not np.isfinite(float(metrics["loss"]))
        assert int(state.nonfinite_count) == expected
        after = _snapshot((state.model, state.opt_state, state.ema))
        assert len(after) == len(before)
        for a, b in zip(after, before):
            np.testing.assert_array_equal(a, b)  # bit for bit, including Adam's count
    assert int(state.step) == 4

    train.check_nonfinite(state, max_consecutive=3)
    with pytest.raises(
        FloatingPointError,
        match="3 consecutive non-finite steps; last finite step 1; lower the learning rate",
    ):
        train.check_nonfinite(state, max_consecutive=2)

    state, metrics = step(state, train.shard_batch(mesh, good))
    assert not bool(metrics["skipped"])
    assert int(state.nonfinite_count) == 0
    train.check_nonfinite(state, max_consecutive=0)
    moved = _snapshot(state.model)
    assert any(not np.array_equal(a, b) for a, b in zip(moved, before))


def test_nonfinite_gradient_is_skipped(getkey):
    # A finite loss with a non-finite gradient (d sqrt(x) / dx at 0) is skipped too.
    mesh = train.make_mesh()
    model = {"w": jnp.zeros(2)}

    def loss_fn(model, batch, key):
        del key
        return jnp.sum(jnp.sqrt(model["w"] * batch[0]))

    optimizer = train.make_optimizer(train.OptimizerConfig(warmup_steps=0), steps=10)
    state = train.replicate(mesh, train.init_state(model, optimizer, getkey(), ema=False))
    step = train.make_train_step(loss_fn, optimizer, mesh)
    state, metrics = step(state, train.shard_batch(mesh, np.ones((1,), np.float32)))
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert bool(metrics["skipped"]) and int(state.nonfinite_count) == 1
    np.testing.assert_array_equal(state.model["w"], np.zeros(2))
    assert state.ema is None


def test_mesh_and_shard_batch_errors():
    with pytest.raises(ValueError, match="data_size"):
        train.make_mesh(len(jax.devices()) + 1)
    mesh = train.make_mesh(-1)
    assert mesh.axis_names == ("data",) and mesh.size == len(jax.devices())
    batch = train.shard_batch(mesh, {"x": np.zeros((4, 2), np.float32)})
    assert batch["x"].shape == (4, 2)


# ------------------------------------------------------------------- compiler options


@pytest.mark.slow
def test_train_step_compiler_options(getkey, monkeypatch):
    # On CPU the step asks XLA for its own convolution kernels instead of YNNPACK's (a
    # speed choice, `benchmarks/train_step.py`); XLA_FLAGS setting the same option wins,
    # and `{}` keeps XLA's defaults. Both compute the same step, up to the order of float32
    # sums inside the kernels (a few ulps of each value).
    mesh = train.make_mesh(1)
    option = "xla_cpu_experimental_ynn_fusion_type"
    fusions = {option: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert train.default_compiler_options(mesh) == fusions
    monkeypatch.setenv("XLA_FLAGS", f"--{option}=-individual_convolution")
    assert train.default_compiler_options(mesh) == {}
    monkeypatch.undo()

    conv = eqx.nn.Conv2d(2, 3, 3, padding=1, key=getkey())
    model = eqx.nn.Sequential(
        [conv, eqx.nn.Lambda(jax.nn.silu), eqx.nn.Conv2d(3, 2, 3, padding=1, key=getkey())]
    )

    def loss_fn(model, batch, key):
        noisy = batch + 0.1 * jax.random.normal(key, batch.shape)
        return jnp.mean((jax.vmap(model)(noisy) - batch) ** 2)

    optimizer = train.make_optimizer(train.OptimizerConfig(lr=1e-2, warmup_steps=0), steps=10)
    batch = train.shard_batch(mesh, np.asarray(jax.random.normal(getkey(), (4, 2, 8, 8))))
    results = []
    for options in (None, {}):
        step = train.make_train_step(loss_fn, optimizer, mesh, compiler_options=options)
        assert step.compiler_options == (fusions if options is None else {})
        state = train.replicate(mesh, train.init_state(model, optimizer, jax.random.key(0)))
        state, metrics = step(state, batch)
        results.append((metrics, _snapshot(state.model)))
    (metrics_a, params_a), (metrics_b, params_b) = results
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_a[name], metrics_b[name], rtol=1e-5)
    for a, b in zip(params_a, params_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # Inside a user's own jit (here a scan over two steps) the step is part of that program
    # and compiles with its options: the same state as two calls at the top level.
    step = train.make_train_step(loss_fn, optimizer, mesh)
    state = train.replicate(mesh, train.init_state(model, optimizer, jax.random.key(0)))
    params, static = eqx.partition(state, eqx.is_array)

    @jax.jit
    def two_steps(params):
        def body(params, _):
            new_state, metrics = step(eqx.combine(params, static), batch)
            return eqx.filter(new_state, eqx.is_array), metrics["loss"]

        return jax.lax.scan(body, params, length=2)

    scanned, losses = two_steps(params)
    for _ in range(2):
        state, metrics = step(state, batch)
    np.testing.assert_allclose(losses[1], metrics["loss"], rtol=1e-5)
    for a, b in zip(_snapshot(eqx.combine(scanned, static).model), _snapshot(state.model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    step = train.make_train_step(loss_fn, optimizer, mesh, compiler_options={"xla_no_such": "1"})
    state = train.replicate(mesh, train.init_state(model, optimizer, jax.random.key(0)))
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option: 'xla_no_such'"):
        step(state, batch)
