"""Latent diffusion: any linear process on a frozen autoencoder's latents, unchanged but
for encoding and decoding, through the core and through the training stack."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptive_diffusion as ad
from adaptive_diffusion import nn, train
from adaptive_diffusion.train._cli import load_run


def _autoencoder():
    ae = nn.Autoencoder((1, 8, 8), key=jax.random.key(0), latent_channels=2, channels=8)
    return eqx.tree_at(lambda m: m.latent_scale, ae, jnp.asarray(0.5))


def _net(h, t):
    return 0.3 * jnp.tanh(h) * (1.0 - t)


@pytest.mark.slow
def test_latent_diffusion_is_its_process_on_the_latents():
    ae = _autoencoder()
    inner = ad.DDPM(ad.linear_betas(50), noise=ad.LaplaceNoise())
    process = ad.LatentDiffusion(inner, ae)
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8), minval=-1.0, maxval=1.0)
    z = ae.encode(x) / 0.5
    key = jax.random.key(2)
    np.testing.assert_array_equal(process.initial_state(key, x).state, z)
    assert process.latent_shape == (2, 4, 4)
    assert process.network_shape((1, 8, 8)) == ((2, 4, 4), 0)
    assert process.prior_sample(key, (1, 8, 8)).shape == (2, 4, 4)
    # The marginal, the loss and the sampler are the inner process's on the latents.
    t = jnp.asarray(0.4)
    np.testing.assert_array_equal(
        process.sample_marginal(key, z, t)[0], inner.sample_marginal(key, z, t)[0]
    )
    np.testing.assert_array_equal(
        ad.denoising_loss(process, _net, x, key=key),
        ad.denoising_loss(inner, _net, z, key=key),
    )
    latent = ad.sample_ancestral(
        process, ad.score_fn(process, _net), key, (1, 8, 8), num_steps=49, denoise=True
    )
    want = ad.sample_ancestral(
        inner, ad.score_fn(inner, _net), key, (2, 4, 4), num_steps=49, denoise=True
    )
    np.testing.assert_array_equal(latent, want)
    # Decoding: the levels nearest D(c z_0) for the noise-free latent at t_min.
    clean = inner.x0_from_eps(latent, inner.t_min, jnp.zeros_like(latent))
    levels = process.decode(latent, 17)
    assert levels.shape == (1, 8, 8) and levels.dtype == jnp.int32
    np.testing.assert_array_equal(levels, ad.to_levels(ae.decode(clean * 0.5), 17))

    # The autoencoder is frozen: not trainable, and no gradient reaches it.
    spec = ad.trainable(process)
    assert not any(jax.tree.leaves(spec.autoencoder))
    grads = eqx.filter_grad(lambda p: ad.denoising_loss(p, _net, x, key=key))(process)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads.autoencoder))

    # No likelihood of the images, and the error says why (what `nelbo` raises, beneath
    # the annotation check these tests run with).
    with pytest.raises(ad.CapabilityError, match="no likelihood of the images"):
        ad.require_capability(process, ad.AbstractLinearGaussianProcess, "The bound")


@pytest.mark.slow
def test_latent_diffusion_from_the_command_line(tmp_path, capsys):
    # Train (the autoencoder unchanged by it), sample and evaluate a Laplace DDPM on the
    # latents of an autoencoder; a bound is refused; an autoencoder of other images too.
    ae_dir = tmp_path / "ae"
    train.save_autoencoder(ae_dir, _autoencoder(), channels=8, report={})
    config = {
        "process": {"kind": "ddpm", "noise": "laplace", "num_steps": 50},
        "network": {"kind": "mlp", "width": 32, "depth": 2},
        "data": {"source": "digits"},
        "eval": {"examples": 8, "num_samples": 4, "sampler": "ancestral", "sample_steps": 49},
        "batch_size": 16,
        "steps": 6,
        "log_every": 3,
        "eval_every": 6,
        "checkpoint_every": 6,
    }
    path = tmp_path / "latent.yaml"
    path.write_text(json.dumps(config))
    workdir = tmp_path / "run"
    args = ["train", "--config", str(path), "--workdir", str(workdir), "--no-progress"]
    assert train.main([*args, "--set", f"process.autoencoder={ae_dir}"]) == 0
    capsys.readouterr()
    _, _, model, step = load_run(str(workdir), raw=True)
    assert step == 6 and isinstance(model.process, ad.LatentDiffusion)
    assert model.objective == "denoising" and model.denoiser.data_shape == (2, 4, 4)
    for got, want in zip(
        jax.tree.leaves(model.process.autoencoder.module), jax.tree.leaves(_autoencoder())
    ):
        np.testing.assert_array_equal(got, want)
    assert (workdir / "samples.png").is_file()

    args = ["eval", "--checkpoint", str(workdir), "--no-progress"]
    assert train.main([*args, "--method", "pr", "--num-samples", "8", "--feature-steps", "5"]) == 0
    assert "precision" in capsys.readouterr().out
    assert train.main([*args, "--method", "elbo"]) == 2
    assert "no likelihood of the images" in capsys.readouterr().err

    other = tmp_path / "other"
    ae = nn.Autoencoder((3, 8, 8), key=jax.random.key(0), channels=8)
    train.save_autoencoder(other, ae, channels=8, report={})
    cfg = train.Config().with_overrides([f"process.autoencoder={other}"])
    with pytest.raises(ValueError, match=r"encodes images of shape \(3, 8, 8\)"):
        train.build_model(cfg, (1, 8, 8), 17, key=jax.random.key(0))
