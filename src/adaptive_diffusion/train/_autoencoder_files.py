"""The files of a trained autoencoder: its weights and the options that rebuild it."""

import json
import os
import pathlib

import equinox as eqx
import jax

from ..nn import Autoencoder


_WEIGHTS = "autoencoder.eqx"
_REPORT = "autoencoder.json"


def save_autoencoder(
    workdir: str | os.PathLike, autoencoder: Autoencoder, *, channels: int, report: dict
) -> None:
    """Write `autoencoder.eqx` (the weights) and `autoencoder.json` (the options that
    rebuild it, with `report`) to `workdir`."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(workdir / _WEIGHTS, autoencoder)
    options = dict(
        data_shape=list(autoencoder.data_shape),
        latent_channels=autoencoder.latent_channels,
        channels=channels,
    )
    (workdir / _REPORT).write_text(json.dumps(dict(options=options, **report), indent=2))


def load_autoencoder(workdir: str | os.PathLike) -> Autoencoder:
    """The autoencoder `fit_autoencoder` wrote to `workdir`; a missing or unreadable file is
    an error naming it."""
    workdir = pathlib.Path(workdir)
    try:
        options = json.loads((workdir / _REPORT).read_text())["options"]
        like = Autoencoder(
            options["data_shape"],
            key=jax.random.key(0),
            latent_channels=options["latent_channels"],
            channels=options["channels"],
        )
        return eqx.tree_deserialise_leaves(workdir / _WEIGHTS, like)
    except Exception as e:
        raise ValueError(
            f"No readable autoencoder in {str(workdir)!r} ({type(e).__name__}: {e}); train one "
            "with `adaptive-diffusion autoencoder --workdir ...`."
        ) from e
