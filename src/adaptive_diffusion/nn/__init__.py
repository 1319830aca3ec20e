"""Networks for one example: denoisers `model(x_t, t)` predicting the noise, MuLAN's
encoders, the classifier behind the sample-quality metrics' features, and the
autoencoder of latent diffusion."""

from ._autoencoder import Autoencoder as Autoencoder, train_autoencoder as train_autoencoder
from ._classifier import Classifier as Classifier
from ._embeddings import (
    fourier_features as fourier_features,
    matched_fourier_exponents as matched_fourier_exponents,
    sinusoidal_embedding as sinusoidal_embedding,
)
from ._encoder import ConvEncoder as ConvEncoder, MLPEncoder as MLPEncoder
from ._mlp import MLPDenoiser as MLPDenoiser
from ._unet import UNet as UNet


__all__ = [
    "Autoencoder",
    "train_autoencoder",
    "Classifier",
    "fourier_features",
    "matched_fourier_exponents",
    "sinusoidal_embedding",
    "ConvEncoder",
    "MLPEncoder",
    "MLPDenoiser",
    "UNet",
]
