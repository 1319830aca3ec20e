"""The autoencoder of latent diffusion: shapes, the round trip on held-out digits, and its
command, files and errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_diffusion import nn, train
from adaptive_diffusion.data import DigitsSource, levels_to_centres


@pytest.mark.slow
def test_autoencoder_shapes_and_errors():
    ae = nn.Autoencoder((3, 8, 6), key=jax.random.key(0), latent_channels=4, channels=8)
    x = jnp.zeros((3, 8, 6))
    assert ae.latent_shape == (4, 4, 3) and ae.encode(x).shape == (4, 4, 3)
    assert ae.decode(ae.encode(x)).shape == (3, 8, 6) and ae(x).shape == (3, 8, 6)
    # No normalisation across a batch: each image's latent is its own.
    batch = jax.random.normal(jax.random.key(1), (5, 3, 8, 6))
    np.testing.assert_allclose(jax.vmap(ae.encode)(batch)[2], ae.encode(batch[2]), rtol=1e-5)
    with pytest.raises(ValueError, match="sides must be even"):
        nn.Autoencoder((1, 7, 8), key=jax.random.key(0))
    with pytest.raises(ValueError, match="latent_channels must be positive"):
        nn.Autoencoder((1, 8, 8), key=jax.random.key(0), latent_channels=0)


@pytest.mark.slow
def test_autoencoder_command_round_trip(tmp_path, capsys):
    # 300 steps already reconstruct held-out digits far better than their mean image does
    # (MSE 0.26): about 0.019 measured; 3000 steps (the command's default) reach 0.0046, so
    # a bound of 0.04 catches a broken fit and not the seed.
    workdir = tmp_path / "ae"
    args = ["autoencoder", "--workdir", str(workdir), "--steps", "300", "--latent-channels", "2"]
    assert train.main(args) == 0
    assert "reconstruction MSE" in capsys.readouterr().out
    report = json.loads((workdir / "autoencoder.json").read_text())
    assert report["options"] == {"data_shape": [1, 8, 8], "latent_channels": 2, "channels": 32}
    assert (workdir / "reconstructions.png").is_file()

    ae = train.load_autoencoder(workdir)
    test = DigitsSource("test")
    error = train.reconstruction(ae, test)
    assert error.mse == pytest.approx(report["test"]["mse"], rel=1e-6)
    assert error.mse < 0.04 and error.level_accuracy > 0.4 and error.num_images == len(test)
    assert error.psnr == pytest.approx(10 * np.log10(4 / error.mse))
    # The latent scale is the training latents' standard deviation.
    latents = jax.vmap(ae.encode)(levels_to_centres(DigitsSource("train").images, 17))
    assert float(ae.latent_scale) == pytest.approx(float(jnp.std(latents)), rel=1e-5)

    (workdir / "autoencoder.eqx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="No readable autoencoder.*adaptive-diffusion autoencoder"):
        train.load_autoencoder(workdir)
    with pytest.raises(ValueError, match="No readable autoencoder"):
        train.load_autoencoder(tmp_path / "nowhere")
