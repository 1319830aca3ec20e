"""Networks for one example: denoisers `model(x_t, t)` predicting the noise, MuLAN's
encoders, and the classifier behind the sample-quality metrics' features."""

from ._classifier import Classifier as Classifier
from ._embeddings import (
    fourier_features as fourier_features,
    matched_fourier_exponents as matched_fourier_exponents,
    sinusoidal_embedding as sinusoidal_embedding,
)
from ._encoder import ConvEncoder as ConvEncoder, MLPEncoder as MLPEncoder
from ._mlp import MLPDenoiser as MLPDenoiser
from ._unet import UNet as UNet
