"""A training run end to end: checkpoints, NaN batches, multi-host, CLI (kills and write
failures: `test_faults.py`)."""

import json
import math
import socket

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import adaptive_diffusion as ad
from adaptive_diffusion import train

from . import runs


@pytest.fixture(scope="module")
def tiny():
    """A tiny digits model's train step, compiled once for the tests of this module, and a
    factory of fresh initial states (each step donates the state it is given)."""
    config = train.Config.from_dict(runs.TINY)
    mesh = train.make_mesh(1)
    model = train.build_model(config, (1, 8, 8), 17, key=jax.random.key(0))
    optimizer = train.make_optimizer(config.optimizer, config.steps)
    step = train.make_train_step(train.training_loss, optimizer, mesh, ema_decay=0.9)

    def fresh_state():
        copy = jax.tree.map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, model)
        return train.replicate(mesh, train.init_state(copy, optimizer, jax.random.key(1)))

    return config, mesh, fresh_state, step


def _digits_batch(n: int = 16) -> np.ndarray:
    images = train.make_source(train.DataConfig(), "train").images[:n]
    return (-1.0 + (2.0 * images.astype(np.float32) + 1.0) / 17).astype(np.float32)


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]


# ------------------------------------------------------------------------- checkpoints


def test_nonfinite_batch_is_skipped_and_never_checkpointed(tmp_path, tiny):
    config, mesh, fresh_state, step = tiny
    state = fresh_state()
    initial = _arrays(state.model)
    checkpointer = train.Checkpointer(tmp_path / "ck", config, max_to_keep=3)
    batch = _digits_batch()
    state, metrics = step(state, train.shard_batch(mesh, batch))
    assert not bool(metrics["skipped"])
    before = _arrays(state.model)
    # The EMA's first step uses decay min(0.9, 1/10): it keeps a tenth of the initial weights.
    for e, i, m in zip(_arrays(state.ema), initial, before):
        np.testing.assert_allclose(e, 0.1 * i + 0.9 * m, rtol=1e-6, atol=1e-7)
    checkpointer.save(state)

    poisoned = batch.copy()
    poisoned[3, 0, 2, 2] = np.nan
    state, metrics = step(state, train.shard_batch(mesh, poisoned))
    assert bool(metrics["skipped"]) and int(metrics["nonfinite_count"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    for a, b in zip(before, _arrays(state.model)):
        np.testing.assert_array_equal(a, b)  # the update was skipped, bit for bit
    checkpointer.save(state)
    assert checkpointer.steps() == [1, 2]

    # A model holding a NaN is refused outright.
    broken = eqx.tree_at(
        lambda s: s.model.denoiser.out.bias, state, replace_fn=lambda b: b.at[0].set(jnp.nan)
    )
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        checkpointer.save(broken)
    checkpointer.close()

    fresh = train.Checkpointer(tmp_path / "ck", config, max_to_keep=3)
    restored = fresh.restore(fresh_state())
    fresh.close()
    assert int(restored.step) == 2
    for a, b in zip(before, _arrays(restored.model)):
        np.testing.assert_array_equal(a, b)
    assert all(np.all(np.isfinite(a)) for a in _arrays((restored.model, restored.ema)))


def test_corrupt_latest_checkpoint_falls_back_and_config_mismatch_is_refused(tmp_path, tiny):
    config, mesh, fresh_state, step = tiny
    state = fresh_state()
    checkpointer = train.Checkpointer(tmp_path / "ck", config, max_to_keep=3)
    for _ in range(2):
        state, _ = step(state, train.shard_batch(mesh, _digits_batch()))
        checkpointer.save(state)
    checkpointer.close()

    # Garble every file of the latest checkpoint's arrays.
    for path in (tmp_path / "ck" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage" * 7)
    fresh = train.Checkpointer(tmp_path / "ck", config, max_to_keep=3)
    with pytest.warns(UserWarning, match="step 2 .* could not be read.*falling back"):
        restored = fresh.restore(fresh_state())
    assert int(restored.step) == 1
    assert jax.random.key_data(restored.key).shape == (2,)  # a typed key again
    fresh.close()

    other = config.with_overrides(["optimizer.lr=0.5", "eval_every=7"])  # eval_every may change
    mismatched = train.Checkpointer(tmp_path / "ck", other, max_to_keep=3)
    match = r"optimizer\.lr: checkpoint 0\.001, now 0\.5"
    with pytest.raises(train.ConfigMismatchError, match=match):
        mismatched.restore(fresh_state())
    mismatched.close()


# ------------------------------------------------------------------------ command line


@pytest.mark.slow
def test_cli_train_eval_sample(tmp_path, capsys):
    config = runs.write_config(tmp_path / "tiny.yaml")
    workdir = tmp_path / "run"
    args = ["train", "--config", str(config), "--workdir", str(workdir), "--no-progress"]
    assert train.main(args) == 0
    for name in ("config.yaml", "metrics.jsonl", "samples.png", "schedule.png"):
        assert (workdir / name).is_file(), name
    assert any((workdir / "tensorboard").glob("events.out.tfevents.*"))
    checkpointer = train.Checkpointer(workdir / "checkpoints", train.Config(), max_to_keep=3)
    assert checkpointer.steps() == [10, 20]
    checkpointer.close()
    assert sorted(runs.losses(workdir)) == list(range(1, 21))
    assert all(np.isfinite(v) for v in runs.losses(workdir).values())
    lines = train.read_metrics(workdir / "metrics.jsonl")
    assert [line["step"] for line in lines if "eval/elbo_bpd" in line] == [20]

    for method in ("elbo", "vlb", "ode"):
        out = tmp_path / f"{method}.json"
        args = ["eval", "--checkpoint", str(workdir), "--method", method, "--num-examples", "6"]
        if method == "ode":
            args += ["--dequantization", "truncated_normal", "--ode-samples", "2"]
            args += ["--tolerance", "auto", "--solver-check", "4"]
        assert train.main([*args, "--num-steps", "16", "--out", str(out), "--no-progress"]) == 0
        result = json.loads(out.read_text())
        assert result["num_examples"] == 6 and result["step"] == 20
        low, high = result["ci95"]
        assert 0 < low < result["value"] < high < 30 and result["unit"] == "bits/dim", result
        if method == "ode":
            # The chosen tolerance, checked on the first 4 examples (one whole batch of 6).
            error = result["solver_error"]
            assert error["tolerance"] in ad.AUTO_TOLERANCES and error["num_examples"] == 6
            assert error["reference_tolerance"] == 1e-7 and error["budget"] > 0, error
        else:
            assert "solver_error" not in result
    # On a fixed grid tuned to the checked examples' adaptive solves.
    out = tmp_path / "grid.json"
    args = ["eval", "--checkpoint", str(workdir), "--method", "ode", "--num-examples", "6"]
    args += ["--grid", "--tolerance", "1e-4", "--solver-check", "4", "--out", str(out)]
    assert train.main([*args, "--no-progress"]) == 0
    error = json.loads(out.read_text())["solver_error"]
    assert error["grid_steps"] > 0 and error["tolerance"] == 1e-4, error
    assert "95% CI" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--solver-check", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--solver-check > 0" in err and "Traceback" not in err

    png = tmp_path / "s.png"
    args = ["sample", "--checkpoint", str(workdir), "--num", "6", "--sampler", "ddim"]
    assert train.main([*args, "--steps", "8", "--out", str(png), "--no-progress"]) == 0
    with Image.open(png) as image:
        assert image.size == (3 * 65 + 1, 2 * 65 + 1)  # 3 x 2 grid of 64 px + gaps

    # Refusals, each with a message naming the fix.
    capsys.readouterr()
    assert train.main(["train", "--config", str(config), "--workdir", str(workdir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train.main(["train", "--config", str(config), "--set", "optimizer.lrr=1"]) == 2
    assert "optimizer.lrr" in capsys.readouterr().err
    args = ["train", "--config", str(config), "--workdir", str(workdir), "--resume"]
    assert train.main([*args, "--set", "seed=3"]) == 2
    assert "seed: checkpoint 0, now 3" in capsys.readouterr().err
    assert train.main(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoints/" in capsys.readouterr().err
    assert train.main(["train", "--config", "nonexistent"]) == 2
    assert "shipped configs" in capsys.readouterr().err
    # Counts are positive, refused as usage errors (exit 2, no traceback).
    for args in (
        ["sample", "--num", "0"],
        ["sample", "--steps", "-1"],
        ["eval", "--batch-size", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.main([args[0], "--checkpoint", str(workdir), *args[1:]])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "expected a positive integer" in err and "Traceback" not in err, args
    for args, expected in (
        (["--tolerance", "0"], "expected 'auto' or a number in (1e-7, 1)"),
        (["--solver-check", "-1"], "expected a non-negative integer"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.main(["eval", "--checkpoint", str(workdir), *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, args


def test_shipped_configs_load():
    for name in train.SHIPPED_CONFIGS:
        config = train.Config.from_yaml(train.config_path(name))
        kind = next((k for k in ("nonisotropic", "mulan", "mdm", "ddpm") if k in name), "vp")
        assert config.process.kind == kind, name
    cifar = train.Config.from_yaml(train.config_path("cifar10"))
    network, optimizer = cifar.network, cifar.optimizer
    assert (network.channels, network.n_layers, network.dropout) == (128, 32, 0.1)
    assert (optimizer.lr, optimizer.b2, optimizer.ema_decay) == (2e-4, 0.99, 0.9999)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_mulan", "patches", "patches_mulan"])
def test_shipped_mulan_and_patches_configs_train(name, tmp_path):
    # The shipped settings (process, latent, endpoints, Fourier features, network), a few
    # steps on a small batch with a cheap evaluation: they build, train and stay finite.
    config = train.Config.from_yaml(train.config_path(name)).with_overrides(
        [
            "steps=3",
            "batch_size=8",
            "log_every=1",
            "eval_every=1000",
            "checkpoint_every=1000",
            "eval.examples=8",
            "eval.num_samples=2",
            "eval.sampler=ddim",
            "eval.sample_steps=4",
        ]
    )
    state = train.train(config, tmp_path, progress=False, pictures=False)
    assert int(state.step) == 3
    losses = list(runs.losses(tmp_path).values())
    assert len(losses) == 3 and np.all(np.isfinite(losses))


@pytest.mark.slow
def test_two_hosts_train_like_one_host_with_two_devices(tmp_path):
    # Two processes joined by jax.distributed (CPU, gloo collectives), each reading its own
    # half of every batch, against one process with two devices: the same global batches
    # and keys, so the same losses and gradient norms up to the order of the cross-device
    # reduction (float32, ~1e-6). The learning rate is 0, so every step compares loss and
    # gradient at the same weights: Adam's first updates, about lr * sign(g), would hide a
    # gradient that was not reduced across hosts from the losses, but not from grad_norm.
    optimizer = {**runs.TINY["optimizer"], "lr": 0.0}
    config = runs.write_config(
        tmp_path / "tiny.yaml", steps=6, checkpoint_every=3, optimizer=optimizer
    )
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    hosts = [
        runs.cli(
            cache,
            "train", "--config", str(config), "--workdir", str(tmp_path / "multi"),
            "--distributed", "--coordinator", f"localhost:{port}",
            "--num-processes", "2", "--process-id", str(i),
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        )
        for i in range(2)
    ]  # fmt: skip
    single = runs.cli(
        cache,
        "train", "--config", str(config), "--workdir", str(tmp_path / "single"),
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )  # fmt: skip
    for proc in (*hosts, single):
        runs.finish(proc)
    for name in ("train/loss", "train/grad_norm"):
        multi = runs.metric(tmp_path / "multi", name)
        assert sorted(multi) == list(range(1, 7))
        one = runs.metric(tmp_path / "single", name)
        np.testing.assert_allclose([multi[s] for s in multi], [one[s] for s in multi], rtol=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "6").is_dir()


@pytest.mark.slow
def test_one_and_eight_devices_train_alike(tmp_path):
    # The same config and seed on 1 and on 8 CPU devices: the same global batches and
    # keys, so the losses differ only by the order of the cross-device reductions. Measured
    # on the digits config (`docs/reliability.md`): at most 3.5e-7 relative over the
    # first 100 steps, growing to 4.7e-5 by step 500 as training amplifies the ulps; 20
    # tiny steps within 1e-5 leave that a 30x margin. One device twice is bit-identical.
    config = runs.write_config(tmp_path / "tiny.yaml", steps=20, checkpoint_every=20)
    cache = tmp_path / "cache"
    devices = {"one": 1, "again": 1, "eight": 8}
    procs = [
        runs.cli(
            cache, "train", "--config", str(config), "--workdir", str(tmp_path / name),
            XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
        )
        for name, count in devices.items()
    ]  # fmt: skip
    for proc in procs:
        runs.finish(proc)
    one, again, eight = (runs.losses(tmp_path / name) for name in devices)
    assert sorted(one) == list(range(1, 21)) and one == again
    np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=1e-5)


def test_build_model_nonisotropic_and_errors():
    import adaptive_diffusion as ad

    config = train.Config.from_dict(runs.TINY).with_overrides(
        ["process.kind=nonisotropic", "process.power=1.5"]
    )
    model = train.build_model(config, (1, 8, 8), 17, key=jax.random.key(0))
    assert isinstance(model, train.DiffusionModel)
    assert isinstance(model.process, ad.NonIsotropicVP)
    assert isinstance(model.process.covariance, ad.GFFCovariance)
    assert model.process.covariance.power == 1.5
    learned = config.with_overrides(["process.learn_covariance=true"])
    model = train.build_model(learned, (1, 8, 8), 17, key=jax.random.key(0))
    assert isinstance(model.process.covariance, ad.LearnedGFFCovariance)
    with pytest.raises(ValueError, match="kind=nonisotropic only"):
        train.build_model(
            train.Config.from_dict(runs.TINY).with_overrides(["process.power=2"]),
            (1, 8, 8),
            17,
            key=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="dropout applies to the UNet only"):
        train.build_model(
            train.Config.from_dict(runs.TINY).with_overrides(["network.dropout=0.1"]),
            (1, 8, 8),
            17,
            key=jax.random.key(0),
        )


@pytest.mark.slow
def test_build_model_mulan_options_and_errors():
    import adaptive_diffusion as ad

    base = train.Config.from_dict(runs.TINY).with_overrides(["process.kind=mulan"])
    xs = jnp.asarray(_digits_batch(8))

    def build(*overrides):
        return train.build_model(
            base.with_overrides(overrides), (1, 8, 8), 17, key=jax.random.key(0)
        )

    model = build("process.schedule=polynomial", "process.encoder=mlp")
    assert isinstance(model, train.DiffusionModel) and isinstance(model.process, ad.MuLAN)
    assert isinstance(model.process.latent, ad.TopKLatent)
    assert isinstance(model.process.schedule, ad.PolynomialScheduleNetwork)
    assert isinstance(model.process.encoder, ad.nn.MLPEncoder)
    bound = eqx.filter_jit(lambda m, xs, k: m.nelbo(xs, key=k))(model, xs, jax.random.key(1))
    assert bound.total.shape == (8,) and np.all(np.isfinite(bound.total))
    # The top-k latent's term is log C(50, 15) nats (see TopKLatent) per image of 64 pixels.
    log_binomial = math.lgamma(51) - math.lgamma(16) - math.lgamma(36)
    np.testing.assert_allclose(bound.auxiliary, log_binomial / (64 * math.log(2.0)), rtol=1e-5)
    # One schedule per test image, each from gamma_min to gamma_max in every pixel; the
    # latent of each image gives it its own schedule.
    ts = jnp.linspace(0.0, 1.0, 5)
    gamma_curves = eqx.filter_jit(lambda m, k, xs: m.gamma_curves(ts, key=k, xs=xs))
    curves = gamma_curves(model, jax.random.key(2), xs[:3])
    assert curves.shape == (3, 5, 64)
    np.testing.assert_allclose(curves[:, 0], -13.3, atol=1e-4)
    np.testing.assert_allclose(curves[:, -1], 5.0, atol=1e-4)
    assert np.ptp(np.asarray(curves[:, 2]), axis=0).max() > 1e-3
    assert gamma_curves(model, jax.random.key(2), None).shape == (4, 5, 64)

    model = build("process.schedule=learned", "process.latent=gaussian", "process.latent_size=8")
    assert isinstance(model.process.schedule, ad.MonotoneScheduleNetwork)
    assert isinstance(model.process.latent, ad.GaussianLatent)
    assert model.process.latent.size == 8
    assert isinstance(model.process.encoder, ad.nn.ConvEncoder)
    model = build("process.latent=none", "process.schedule=linear")
    assert model.process.encoder is None
    assert isinstance(model.process.schedule, ad.FixedLatentSchedule)
    assert build("process.latent=topk").process.latent.perturbation.tau == 10.0
    assert build("process.latent_tau=0.5").process.latent.perturbation.tau == 0.5
    assert gamma_curves(model, jax.random.key(2), xs[:3]).shape == (3, 5, 64)
    # Endpoints: fixed for MuLAN's networks unless asked (the reference pins them),
    # learned for VDM's schedule unless asked; the denoiser gets the matched features.
    model = build("process.schedule=polynomial", "process.endpoints=learned")
    assert isinstance(model.process.schedule.endpoints, ad.LearnedEndpoints)
    assert isinstance(
        build("process.schedule=learned").process.schedule.endpoints, ad.FixedEndpoints
    )
    vp = build(
        "process.kind=vp",
        "process.schedule=learned",
        "process.endpoints=fixed",
        "network.fourier=none",
    )
    assert isinstance(vp.process.schedule.endpoints, ad.FixedEndpoints)
    assert vp.denoiser.fourier_exponents == ()
    assert model.denoiser.fourier_exponents == pytest.approx((math.log2(8.5) - 1, math.log2(8.5)))
    # Features of the image's channel only, not of its log-SNR channel.
    assert model.denoiser.fourier_channels == 1
    assert model.denoiser.lift.in_features == 2 * 64 + 4 * 64

    for wrong, match in [
        (
            ["process.kind=vp", "process.schedule=linear", "process.endpoints=learned"],
            "fixed endpoints",
        ),
        (["process.schedule=cosine", "process.endpoints=learned"], "fixed endpoints"),
        (["process.kind=mdm", "process.endpoints=fixed"], "kind="),
        (["process.kind=vp", "process.schedule=polynomial"], "not a schedule of kind=vp"),
        (["process.kind=banana"], "Unknown process.kind 'banana'; the kinds are: vp, "),
        (["process.latent=uniform"], "Unknown process.latent 'uniform'"),
        (["process.kind=nonisotropic", "process.latent_size=3"], "kind=mulan only"),
        (["process.kind=vp", "process.latent=gaussian"], "kind=mulan only"),
        (["process.kind=vp", "process.encoder=mlp"], "kind=mulan only"),
        (["process.latent=none", "process.latent_size=4"], "latent=none"),
        (["process.latent=gaussian", "process.latent_tau=1"], "latent=gaussian has none"),
        (["process.latent_tau=-1"], "tau > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            build(*wrong)


def test_mdm_configs_build_every_diffusion():
    import adaptive_diffusion as ad

    base = train.Config.from_yaml(train.config_path("digits_mdm"))

    def build(*overrides):
        return train.build_model(
            base.with_overrides(overrides), (1, 8, 8), 17, key=jax.random.key(0)
        )

    for overrides, kind, num_aux in [
        ((), ad.LinearMDM, 1),
        (("process.diffusion=alda",), ad.LinearMDM, 2),
        (("process.diffusion=malda", "process.num_aux=3"), ad.LinearMDM, 3),
        (("process.diffusion=learned", "process.num_aux=2"), ad.LearnedMDM, 2),
    ]:
        model = build(*overrides)
        assert isinstance(model.process, kind) and model.process.num_aux == num_aux, overrides
        # The same MLP, with the K + 1 variables of each pixel as channels, and the
        # Fourier features (2 exponents, sine and cosine) of the data's 64 only.
        assert model.denoiser.lift.in_features == 64 * (num_aux + 1) + 4 * 64, overrides
    # q(v_0 | x) is the reference's fixed law unless `aux_init=learned`, and then it is
    # among the arrays training updates.
    assert model.process.aux_params is None
    for overrides in [
        ("process.aux_init=learned",),
        ("process.diffusion=learned", "process.aux_init=learned"),
    ]:
        learned = build(*overrides).process
        coef, var = learned.aux_init()
        np.testing.assert_allclose(coef, 0.0)
        np.testing.assert_allclose(var, 0.01, rtol=1e-6)
        params = eqx.filter(learned, ad.trainable(learned))
        assert params.aux_params is not None, overrides
    # So is where the bound starts with `endpoints=learned`, from gamma_min's t_min.
    for diffusion in ("cld", "learned"):
        learned = build(f"process.diffusion={diffusion}", "process.endpoints=learned").process
        params = eqx.filter(learned, ad.trainable(learned))
        assert params.time_logit is not None and model.process.time_logit is None, diffusion
        np.testing.assert_allclose(learned.t_min, learned.time_min, rtol=1e-6)
        if diffusion == "cld":
            start = learned.gamma(jnp.zeros((2, 1, 8, 8)), learned.t_min)
            np.testing.assert_allclose(start, -4.5, atol=1e-4)
    # The shipped config importance-samples its times on the process's own beta.
    assert base.process.times == "likelihood"
    alda = build("process.diffusion=alda")
    assert alda.times == ad.LikelihoodWeightedTimes(alda.process.beta_min, alda.process.beta_max)
    assert isinstance(build("process.times=antithetic").times, ad.AntitheticTimes)
    xs = jnp.asarray(_digits_batch(8))
    bound = eqx.filter_jit(lambda m, xs, k: m.nelbo(xs, key=k))(model, xs, jax.random.key(1))
    assert bound.total.shape == (8,) and np.all(np.isfinite(bound.total))
    for wrong, match in [
        (["process.kind=vp", "process.times=likelihood"], "kind=mdm only"),
        (["process.times=stratified"], "Unknown process.times 'stratified'"),
        (["process.diffusion=heun"], "Unknown process.diffusion 'heun'"),
        (["process.num_aux=2"], "fixed number of variables"),
        (["process.schedule=cosine"], "kind=vp or nonisotropic or mulan only"),
        (["process.kind=vp", "process.aux_init=learned"], "kind=mdm only"),
    ]:
        with pytest.raises(ValueError, match=match):
            build(*wrong)


@pytest.mark.slow
def test_mulan_without_latent_is_the_vp_model():
    # MuLAN with the latent off and VDM's linear schedule, around a network that reads only
    # the noisy image, gives VP's bound bit for bit through the one model class: the
    # batch's times, keys and terms are plumbed alike.
    import adaptive_diffusion as ad

    shape = (1, 8, 8)
    net = ad.nn.MLPDenoiser(shape, key=jax.random.key(0), width=32, depth=1)
    net = eqx.tree_at(lambda n: n.out.weight, net, jax.random.normal(jax.random.key(1), (64, 32)))
    schedule = ad.LinearSchedule(-13.3, 5.0)
    common = dict(parameterization=ad.EpsilonPrediction(), data_shape=shape, num_levels=17)
    vp = train.DiffusionModel(process=ad.VP(schedule), denoiser=net, **common)
    mulan = ad.MuLAN(
        shape,
        key=jax.random.key(2),
        latent=ad.NoLatent(),
        schedule=ad.FixedLatentSchedule(schedule),
    )
    model = train.DiffusionModel(
        process=mulan, denoiser=lambda h, t, cond=None, key=None: net(h[:1], t), **common
    )
    xs = jnp.asarray(_digits_batch(8))
    key = jax.random.key(3)
    expected, got = vp.nelbo(xs, key=key), model.nelbo(xs, key=key)
    for field in ("total", "diffusion", "prior", "reconstruction", "auxiliary"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
    np.testing.assert_array_equal(got.auxiliary, 0.0)


def test_antithetic_times_visit_every_step_once():
    # A batch of T examples of the T-step bound: antithetic times rounded up to the grid
    # i/T cover each of the T steps exactly once.
    import adaptive_diffusion as ad

    for steps in (7, 16, 1000):
        u = ad.antithetic_times(jax.random.key(steps), steps)
        grid = np.maximum(np.ceil(np.asarray(u, np.float64) * steps), 1)
        assert sorted(grid.astype(int)) == list(range(1, steps + 1))


@pytest.mark.slow
def test_cli_mulan_run_writes_the_snr_figure(tmp_path):
    config = runs.write_config(
        tmp_path / "mulan.yaml",
        process={"kind": "mulan", "schedule": "polynomial", "encoder": "mlp"},
        steps=10,
        log_every=5,
    )
    workdir = tmp_path / "run"
    args = ["train", "--config", str(config), "--workdir", str(workdir), "--no-progress"]
    assert train.main(args) == 0
    with Image.open(workdir / "snr.png") as image:
        assert image.size[0] > image.size[1]  # six columns, one per test image


@pytest.mark.slow
def test_build_model_ddpm_families_and_errors():
    # kind=ddpm: every noise family of the registry with its shape, DDPM's uniform steps,
    # the denoising objective by capability (no bound), and refusals naming the fix.
    import adaptive_diffusion as ad

    base = train.Config.from_yaml(train.config_path("digits_ddpm"))

    def build(*overrides):
        return train.build_model(
            base.with_overrides(overrides), (1, 8, 8), 17, key=jax.random.key(0)
        )

    families = {
        "gaussian": ad.GaussianNoise(),
        "laplace": ad.LaplaceNoise(),
        "uniform": ad.UniformNoise(),
        "gumbel": ad.GumbelNoise(),
        "exponential": ad.ExponentialNoise(),
        "student_t": ad.StudentTNoise(5.0),
        "generalized_gaussian": ad.GeneralizedGaussianNoise(1.0),
    }
    assert set(families) == set(train.NOISES)
    for name, noise in families.items():
        model = build(f"process.noise={name}")
        assert isinstance(model.process, ad.DDPM) and model.process.noise == noise, name
        assert model.times == ad.StepTimes(1000) and model.objective == "denoising", name
    assert build("process.noise=student_t", "process.noise_shape=3").process.noise.df == 3.0
    cosine = build("process.betas=cosine", "process.num_steps=50").process
    assert cosine.num_steps == 50
    assert cosine.schedule == ad.BetaSchedule(ad.cosine_betas(50))

    # The model's per-example loss is ad.denoising_loss with the batch's times and the
    # first half of each example's key (the second drives dropout).
    model = build("process.noise=laplace")
    xs = jnp.asarray(_digits_batch(4))
    key = jax.random.key(3)
    got = model.loss(xs, key=key)
    key_t, key_rest = jax.random.split(key)
    uniforms = model.times.uniforms(key_t, 4)
    want = [
        ad.denoising_loss(
            model.process,
            model.model(),
            x,
            key=jax.random.split(k)[0],
            times=model.times,
            uniform=u,
        )
        for x, k, u in zip(xs, jax.random.split(key_rest, 4), uniforms)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # A VP model may train by the denoising loss too; a DDPM has no ELBO to train by.
    vp = train.build_model(
        train.Config().with_overrides(["objective=denoising"]), (1, 8, 8), 17, key=key
    )
    assert vp.objective == "denoising" and vp.loss(xs, key=key).shape == (4,)
    assert train.build_model(train.Config(), (1, 8, 8), 17, key=key).objective == "elbo"
    with pytest.raises(ad.CapabilityError, match="LaplaceNoise the marginals define no Markov"):
        build("process.noise=laplace", "objective=elbo")
    with pytest.raises(ad.CapabilityError, match="as_vp"):
        model = build()
        model.nelbo(xs, key=key)
    for wrong, match in [
        (["process.noise=cauchy"], "Unknown process.noise 'cauchy'"),
        (["process.noise=laplace", "process.noise_shape=2"], "noise=laplace has none"),
        (["process.noise=student_t", "process.noise_shape=2"], "df > 2"),
        (["process.betas=quadratic"], "Unknown process.betas 'quadratic'"),
        (["process.num_steps=1"], "T >= 2"),
        (["process.schedule=cosine"], "kind=vp or nonisotropic or mulan only"),
        (["process.kind=vp", "process.noise=laplace"], "kind=ddpm only"),
        (["process.times=likelihood"], "kind=mdm only"),
    ]:
        with pytest.raises(ValueError, match=match):
            build(*wrong)


@pytest.mark.slow
def test_cli_ddpm_run_with_laplace_noise(tmp_path, capsys):
    # The CLI's train, eval and sample, unchanged, on a Laplace DDPM: trained and evaluated
    # by the denoising loss, sampled by DDPM's ancestral sampler on its T - 1 steps; asking
    # for a likelihood is refused with the reason.
    config = runs.write_config(
        tmp_path / "ddpm.yaml",
        process={"kind": "ddpm", "noise": "laplace", "num_steps": 50},
        eval={"examples": 16, "num_samples": 4, "sampler": "ancestral", "sample_steps": 49},
        steps=10,
        eval_every=10,
    )
    workdir = tmp_path / "run"
    args = ["train", "--config", str(config), "--workdir", str(workdir), "--no-progress"]
    assert train.main(args) == 0
    assert (workdir / "samples.png").is_file() and (workdir / "schedule.png").is_file()
    held_out = runs.metric(workdir, "eval/denoising_mse")
    assert list(held_out) == [10] and 0 < held_out[10] < 3, held_out
    assert all(np.isfinite(v) for v in runs.losses(workdir).values())

    out = tmp_path / "denoising.json"
    args = ["eval", "--checkpoint", str(workdir), "--num-examples", "8", "--no-progress"]
    assert train.main([*args, "--method", "denoising", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["unit"] == "MSE" and 0 < result["value"] < 3, result
    capsys.readouterr()
    for method in ("elbo", "ode"):
        assert train.main([*args, "--method", method]) == 2
        assert "no variational bound or ODE likelihood" in capsys.readouterr().err

    png = tmp_path / "s.png"
    args = ["sample", "--checkpoint", str(workdir), "--num", "4", "--steps", "49"]
    assert train.main([*args, "--out", str(png), "--no-progress"]) == 0
    assert png.is_file()

    # Sample quality: one cached draw of samples serves fid, kid and pr; the feature
    # classifier is trained once and cached in the run folder.
    args = ["eval", "--checkpoint", str(workdir), "--num-samples", "24", "--no-progress"]
    args += ["--feature-steps", "20"]
    results = {}
    for method in ("fid", "kid", "pr"):
        out = tmp_path / f"{method}.json"
        assert train.main([*args, "--method", method, "--out", str(out)]) == 0
        results[method] = json.loads(out.read_text())
        assert f"24 samples vs {results[method]['num_reference']} test" in capsys.readouterr().out
    assert [p.name for p in (workdir / "samples").iterdir()] == [
        "step10-ema-ancestral49-n24-seed0.npy"
    ]
    assert len(list((workdir / "features").iterdir())) == 1
    fid, kid, pr = results["fid"], results["kid"], results["pr"]
    assert fid["num_samples"] == 24 and fid["steps"] == 49 and fid["sampler"] == "ancestral"
    assert 0 < fid["low"] < fid["high"] and fid["value"] > 0, fid
    assert kid["low"] < kid["high"] and "subsets of 12" in kid["detail"], kid
    assert 0 <= pr["value"] <= 1 and 0 <= pr["recall"] <= 1, pr
    assert 0 <= fid["extractor_accuracy"] <= 1

    # A corrupt sample cache is named, with the fix.
    (workdir / "samples" / "step10-ema-ancestral49-n24-seed0.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot be read.*delete the file"):
        train.main([*args, "--method", "fid"])


def test_sample_quality_closed_cases():
    # Samples equal to the reference: FID is 0 up to the float64 matrix square root,
    # precision and recall are 1; samples far from it are separated by every figure.
    from adaptive_diffusion.data import DigitsSource

    test = DigitsSource("test")
    flat = lambda images: images.reshape(len(images), -1)[:, :16]  # noqa: E731
    same = {m: train.sample_quality(m, test.images, test, flat) for m in train.QUALITY_METHODS}
    assert abs(same["fid"].value) < 1e-6 and same["fid"].num_samples == len(test)
    assert same["pr"].value == 1.0 and same["pr"].recall == 1.0
    # KID of a set with itself: the unbiased estimate is slightly below 0 (the diagonal
    # is excluded within sets, not across them), small beside a real shift.
    blank = np.zeros_like(test.images)
    far = {m: train.sample_quality(m, blank, test, flat) for m in ("fid", "kid")}
    assert far["fid"].value > 100 * max(same["fid"].value, 1e-3)
    assert far["kid"].value > 100 * abs(same["kid"].value)
    assert "biased upward" in str(same["fid"]) and f"{len(test)} samples" in str(same["fid"])

    with pytest.raises(ValueError, match="Unknown sample-quality method 'is'"):
        train.sample_quality("is", test.images, test, flat)
    with pytest.raises(ValueError, match="evaluate a model of the data set"):
        train.sample_quality("fid", test.images[:, :, :4], test, flat)
