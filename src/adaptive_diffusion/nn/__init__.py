"""Denoising networks: `model(x_t, t)` for one example, predicting the noise."""

from ._embeddings import (
    fourier_features as fourier_features,
    matched_fourier_exponents as matched_fourier_exponents,
    sinusoidal_embedding as sinusoidal_embedding,
)
from ._encoder import ConvEncoder as ConvEncoder, MLPEncoder as MLPEncoder
from ._mlp import MLPDenoiser as MLPDenoiser
from ._unet import UNet as UNet
