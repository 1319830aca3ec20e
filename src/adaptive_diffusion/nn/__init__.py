"""Denoising networks: `model(x_t, t)` for one example, predicting the noise."""

from ._embeddings import (
    fourier_features as fourier_features,
    sinusoidal_embedding as sinusoidal_embedding,
)
from ._encoder import ConvEncoder as ConvEncoder, MLPEncoder as MLPEncoder
from ._mlp import MLPDenoiser as MLPDenoiser
from ._unet import UNet as UNet
