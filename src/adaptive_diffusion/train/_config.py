"""The training configuration: frozen dataclasses, loaded from YAML with overrides.

A run is described by one [`adaptive_diffusion.train.Config`][], a tree of frozen
dataclasses with typed fields and defaults. It is read from a YAML file whose nesting
mirrors the dataclasses, and patched from the command line by dotted overrides such as
`"optimizer.lr=1e-4"`, each value parsed by the type of the field it sets. Unknown keys
and values of the wrong type raise a `ValueError` naming the key, so a typo never
silently falls back to a default.
"""

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

import yaml

from .._latents import SumOfGammaPerturbation
from ._files import write_atomic
from ._registry import DEQUANTIZATIONS, check_process_config


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    r"""The forward process, its log-SNR schedule and what the network predicts.

    The kinds, their schedules and the options each reads live in one registry
    (`train.PROCESS_KINDS`); an unknown value, or an option the kind does not read, is
    refused with the key named.

    **Arguments:**

    - `kind`: `"vp"`, the scalar variance-preserving process of VDM; `"nonisotropic"`,
      the same with Gaussian-free-field noise $\Sigma^{1/2}\varepsilon$ (NI-DDPM);
      `"mulan"`, a per-dimension schedule $\gamma(z, t)$ conditioned on an auxiliary
      latent $z \sim q(z \mid x)$ (MuLAN); `"mdm"`, a linear multivariate diffusion
      with auxiliary variables (its own linear $\beta(t)$; no schedule options); or
      `"ddpm"`, discrete-time DDPM with a noise family of its own (Gaussian or not),
      trained by noise regression on its uniform steps; it has no likelihood, see
      `ad.DDPM`.
    - `schedule`: `"linear"`, `"cosine"` or `"learned"` (VDM's monotone network; for
      `"mulan"`, that network conditioned on $z$ with one output per dimension), or
      `"polynomial"` (`"mulan"` only: MuLAN's degree-5 polynomial per dimension).
    - `gamma_min`, `gamma_max`: the endpoints $\gamma(0)$ and $\gamma(1)$ of the
      negative log-SNR. For `"mdm"`, `gamma_min` is the data coordinate's negative log-SNR
      where the bound starts, which fixes its $t_{\min}$ (`ad.time_min_for_gamma`); the
      end at $t = 1$ is the diffusion's own.
    - `endpoints`: whether the schedule's endpoints are `"learned"` or `"fixed"` (at
      `gamma_min`, `gamma_max`); `"default"` keeps each family's own choice: VDM's
      `"learned"` schedule learns them, `"linear"` and `"cosine"` fix them, and MuLAN's
      network schedules fix them, as its reference does (learning them is a departure,
      see `ad.PolynomialScheduleNetwork`). For `"mdm"`, `"learned"` learns the
      $t_{\min}$ where the bound starts, from `gamma_min`'s (the data-side endpoint; the
      default fixes it).
    - `parameterization`: what the network predicts: `"eps"` (the noise), `"x"` (the
      data) or `"v"` (the velocity).
    - `power`: the GFF's spectral power $p$, $s(k) \propto \lvert k\rvert^{-2p}$
      (`"nonisotropic"` only; 1 is the paper's).
    - `learn_covariance`: fit the power and the DC weight with the rest of the model
      (`"nonisotropic"` only).
    - `latent`: the family of MuLAN's latent (`"mulan"` only): `"topk"` (the
      reference's 50 units with 15 hot), `"gaussian"`, `"categorical"` or `"none"`.
    - `latent_size`: the latent's dimension (units, or categories); 0 for the family's
      default, the reference's 50.
    - `latent_tau`: the temperature $\tau$ of the top-$k$ latent's sum-of-Gamma noise
      (`latent="topk"` only; the reference's 10, see `ad.SumOfGammaPerturbation`).
    - `diffusion`: the multivariate diffusion of `"mdm"`: `"cld"` (one auxiliary
      variable), `"alda"` (two), `"malda"` or `"learned"` (Q and D learned).
    - `num_aux`: its number K of auxiliary variables (`"malda"`, `"learned"`); 0 for the
      family's default.
    - `aux_init`: the law $q(v_0 \mid x)$ of the auxiliary variables at $t = 0$ (`"mdm"`
      only): `"fixed"`, the reference's $\mathcal N(0, 0.01 I)$, or `"learned"`,
      $\mathcal N(c\,x, \operatorname{diag}(s^2))$ with $c$ and $s$ per auxiliary variable
      learned from there.
    - `mixed_score`: the data variance $\sigma^2$ of the Gaussian whose exact denoiser
      the network's output is added to (`"mdm"` only; `ad.AbstractLinearMDM.gaussian_eps`,
      Dockhorn et al.'s mixed score); 0, the default, for none.
    - `times`: how the bound draws its times (`"mdm"` only; the others use
      `"antithetic"`): `"antithetic"`, VDM's low-discrepancy uniform times, or
      `"likelihood"`, the same numbers importance-sampled by VP's likelihood weighting on
      the process's own $\beta$ (`ad.LikelihoodWeightedTimes`, the MDM reference's).
    - `noise`: DDPM's noise family (`"ddpm"` only): `"gaussian"`, `"laplace"`,
      `"uniform"`, `"gumbel"`, `"exponential"` (centred), `"student_t"` or
      `"generalized_gaussian"`, each with mean 0 and variance 1 (`train.NOISES`).
    - `noise_shape`: Student-t's degrees of freedom ($> 2$; 5 by default) or the
      generalised Gaussian's power ($> 0$; 1, the Laplace, by default); 0 for the default.
    - `betas`: DDPM's $\beta$ schedule (`"ddpm"` only): `"linear"` ($10^{-4}$ to 0.02,
      Ho et al.) or `"cosine"` (Nichol & Dhariwal).
    - `num_steps`: DDPM's number $T$ of latents (`"ddpm"` only); its ancestral sampler is
      `eval.sample_steps = T - 1` steps on the latents' grid.
    - `autoencoder`: latent diffusion (every kind): the folder of an autoencoder
      written by `adaptive-diffusion autoencoder`; the process of `kind` then runs on
      its latents (`ad.LatentDiffusion`), trains by the denoising loss, its network sees
      the latent's shape without Fourier features (latents have no bins), and samples
      are decoded to images. Empty (the default) for pixel space.
    - `encoder`: MuLAN's encoder of $q(z \\mid x)$ (`"mulan"` only): `"conv"`, the
      reference's (the down path and middle of the UNet, 64 channels; ~30 times the
      compute of the digits MLP denoiser), or `"mlp"`, two hidden layers of 256 units.
    """

    kind: str = "vp"
    schedule: str = "learned"
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    endpoints: Literal["default", "fixed", "learned"] = "default"
    parameterization: Literal["eps", "x", "v"] = "eps"
    power: float = 1.0
    learn_covariance: bool = False
    latent: str = "topk"
    latent_size: int = 0
    latent_tau: float = SumOfGammaPerturbation.tau
    encoder: str = "conv"
    diffusion: str = "cld"
    num_aux: int = 0
    aux_init: Literal["fixed", "learned"] = "fixed"
    mixed_score: float = 0.0
    times: str = "antithetic"
    noise: str = "gaussian"
    noise_shape: float = 0.0
    betas: str = "linear"
    num_steps: int = 1000
    autoencoder: str = ""

    def __post_init__(self):
        changed = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        check_process_config(self, changed)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The denoiser.

    **Arguments:**

    - `kind`: `"mlp"` or `"unet"`.
    - `width`, `depth`: hidden units and residual blocks of the MLP.
    - `channels`, `n_layers`: base channels and residual layers of the UNet.
    - `dropout`: the dropout rate inside the UNet's residual blocks, during training only.
    - `unroll`: whether the UNet's repeated blocks run unrolled or in `jax.lax.scan`;
      `None` unrolls on CPU, where convolutions inside a scan lose their fast kernel,
      and scans elsewhere (see `nn.UNet`).
    - `fourier`: the input's Fourier features (of the data's channels only):
      `"matched"` to the data's bins (the exponents of
      `nn.matched_fourier_exponents(num_levels)`: VDM's (6, 7) for 256 levels), or
      `"none"`. Measured with the MLP (seed 0, 1500 steps, held-out ELBO): on the 17-level
      digits they gain 0.7 bits/dim (2.97 against 3.68), on the 256-level patches they
      cost 0.9 (5.29 against 4.39), so `patches.yaml` turns them off.
    """

    kind: Literal["mlp", "unet"] = "mlp"
    width: int = 256
    depth: int = 3
    channels: int = 64
    n_layers: int = 8
    dropout: float = 0.0
    unroll: bool | None = None
    fourier: Literal["matched", "none"] = "matched"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data.

    **Arguments:**

    - `source`: `"digits"`, `"patches"`, `"cifar10"`, `"imagenet32"`, `"folder"` or `"npz"`.
    - `path`: where the files are (unused by `"digits"` and `"patches"`): the folder
      of the CIFAR-10 batches or the ImageNet32 npz files, which hold both splits, or
      the training images of `"folder"` (a folder) and `"npz"` (a `.npy`/`.npz` file).
    - `test_path`: the held-out images of `"folder"` and `"npz"`.
    - `num_levels`: the number of levels of `"npz"` images (the others know theirs).
    - `patch_size`: the side of the square patches of the `"patches"` source.
    - `flip`: random horizontal flips of the training images (off by default: they
      change the distribution whose likelihood is measured).
    """

    source: Literal["digits", "patches", "cifar10", "imagenet32", "folder", "npz"] = "digits"
    path: str | None = None
    test_path: str | None = None
    num_levels: int = 256
    patch_size: int = 8
    flip: bool = False


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with gradient clipping, linear warmup, cosine decay and an EMA of the weights.

    **Arguments:**

    - `lr`: the peak learning rate, reached after `warmup_steps`.
    - `warmup_steps`: steps of linear warmup from 0.
    - `weight_decay`: AdamW's decoupled weight decay (applied to matrices only).
    - `clip_norm`: the global gradient norm is clipped to this value.
    - `lr_decay`: cosine decay of the learning rate to 0 at the last step; without it the
      rate stays at `lr` after the warmup (as in VDM).
    - `b1`, `b2`: Adam's decay rates of the first and second moments.
    - `ema_decay`: the decay of the exponential moving average of the parameters; 0 keeps
      no average.
    """

    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    lr_decay: bool = True
    b1: float = 0.9
    b2: float = 0.999
    ema_decay: float = 0.999


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh.

    **Arguments:**

    - `data`: the size of the `"data"` axis; `-1` for all devices.
    """

    data: int = -1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What is measured and drawn during and after training.

    **Arguments:**

    - `examples`: how many test examples the periodic held-out bound uses.
    - `num_samples`: how many samples the picture written after training shows.
    - `sampler`: `"ancestral"`, `"ddim"`, `"ode"` (probability flow) or `"sde"`
      (reverse SDE).
    - `sample_steps`: the sampler's steps (ignored by the adaptive `"ode"` sampler).
    - `dequantization`: how the ODE likelihood turns the density into a probability of
      the discrete data: `"process"` (the forward process's own $q(z_0 \\mid x)$ and
      decoder, consistent with training on bin centres), `"truncated_normal"` (i-DODE's,
      MuLAN's evaluation) or `"uniform"`.
    - `ode_samples`: draws per example of the ODE bound (of the dequantisation and of
      any auxiliary state: MuLAN's latent, an MDM's $v_0$), combined by importance
      weighting (MuLAN's reference uses 20); more than one switches the solves to the
      exact trace, which a weighted bound needs (see `ad.ode_bits_per_dim`).
    """

    examples: int = 512
    num_samples: int = 64
    sampler: Literal["ancestral", "ddim", "ode", "sde"] = "ancestral"
    sample_steps: int = 1000
    dequantization: str = "process"
    ode_samples: int = 1

    def __post_init__(self):
        if self.dequantization not in DEQUANTIZATIONS:
            raise ValueError(
                f"Unknown eval.dequantization {self.dequantization!r}; use one of "
                f"{', '.join(DEQUANTIZATIONS)}."
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run.

    **Arguments:**

    - `process`, `network`, `data`, `optimizer`, `mesh`, `eval`: the sections above.
    - `objective`: what training minimises: `"elbo"`, the negative ELBO in bits/dim (a
      linear-Gaussian process only); `"denoising"`, the noise-prediction MSE (Ho et al.'s
      $L_{\text{simple}}$, unitless) on the process's times; `"default"`, the ELBO where
      the process has one and the denoising loss otherwise (`"ddpm"`). The periodic
      held-out figure is the same objective.
    - `batch_size`: the global batch size, across all hosts and devices.
    - `steps`: the number of optimizer steps.
    - `log_every`, `eval_every`, `checkpoint_every`: intervals in steps.
    - `max_to_keep`: checkpoints kept on disk.
    - `seed`: the seed of every random choice of the run.
    - `max_consecutive_nonfinite`: training stops with an error after more consecutive
      steps than this with a non-finite loss or gradient (each of which is skipped).
    """

    process: ProcessConfig = ProcessConfig()
    network: NetworkConfig = NetworkConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    eval: EvalConfig = EvalConfig()
    objective: Literal["default", "elbo", "denoising"] = "default"
    batch_size: int = 128
    steps: int = 10_000
    log_every: int = 50
    eval_every: int = 1_000
    checkpoint_every: int = 1_000
    max_to_keep: int = 3
    seed: int = 0
    max_consecutive_nonfinite: int = 10

    def __post_init__(self):
        for name, valid, expected in _RANGES:
            value = self
            for part in name.split("."):
                value = getattr(value, part)
            if not valid(value):
                raise ValueError(f"{name} must be {expected}, got {value}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """The config with the values of a nested mapping, defaults elsewhere.

        **Arguments:**

        - `data`: a mapping whose nesting mirrors the dataclasses, e.g.
          `{"optimizer": {"lr": 1e-3}, "steps": 100}`.

        **Raises:** `ValueError` on an unknown key or a value of the wrong type.
        """
        return _from_dict(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Config":
        """The config in a YAML file (an empty file gives the defaults).

        **Arguments:**

        - `path`: the YAML file.
        """
        with open(path) as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                problem = " ".join(str(e).split())
                raise ValueError(f"{path} is not valid YAML: {problem}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping at the top level, got {data!r}.")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts, for YAML or JSON next to a checkpoint."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the config to a YAML file that `from_yaml` reads back.

        **Arguments:**

        - `path`: the file to write (whole or not at all: see `write_atomic`).
        """
        write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: Sequence[str]) -> "Config":
        """A copy with dotted overrides applied in order.

        **Arguments:**

        - `overrides`: strings `"section.field=value"` or `"field=value"`, e.g.
          `"optimizer.lr=1e-4"`, `"data.path=none"`. The value is parsed by the type of the
          field: `int`, `float`, `bool` (`true`/`false`), a literal choice, or a string;
          `none`/`null` sets an optional field to `None`.

        **Raises:** `ValueError` on a malformed override, an unknown key or a value that
        does not parse as the field's type.
        """
        data = self.to_dict()
        for override in overrides:
            dotted, sep, text = override.partition("=")
            if not sep or not dotted.strip():
                raise ValueError(f"Override {override!r} is not of the form 'key=value'.")
            parts = dotted.strip().split(".")
            cls: type = type(self)
            node = data
            for i, part in enumerate(parts):
                prefix = ".".join(parts[:i])
                hints = _fields(cls)
                if part not in hints:
                    raise _unknown(prefix + "." + part if prefix else part, hints)
                tp = hints[part]
                if i < len(parts) - 1:
                    if not dataclasses.is_dataclass(tp):
                        raise ValueError(f"{'.'.join(parts[: i + 1])!r} is not a section.")
                    assert isinstance(tp, type)
                    cls, node = tp, node[part]
                elif dataclasses.is_dataclass(tp):
                    raise ValueError(f"{dotted!r} is a section; set one of its fields instead.")
                else:
                    node[part] = _parse(text.strip(), tp, dotted)
        return self.from_dict(data)


class ConfigError(ValueError):
    """A config that cannot be read or run: an unknown key, a value out of range, a
    setting the devices cannot meet. The message names the setting and the fix."""


def _positive(value) -> bool:
    return value > 0


_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    *((name, _positive, "positive") for name in ("batch_size", "steps", "max_to_keep")),
    *((name, _positive, "positive") for name in ("log_every", "eval_every", "checkpoint_every")),
    ("max_consecutive_nonfinite", lambda v: v >= 0, ">= 0"),
    ("optimizer.lr", lambda v: v >= 0, ">= 0"),
    ("optimizer.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optimizer.clip_norm", _positive, "positive"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.ema_decay", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("network.width", _positive, "positive"),
    ("network.depth", _positive, "positive"),
    ("network.channels", _positive, "positive"),
    ("network.n_layers", _positive, "positive"),
    ("network.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.num_levels", lambda v: v >= 2, ">= 2"),
    ("data.patch_size", _positive, "positive"),
    ("eval.examples", _positive, "positive"),
    ("eval.num_samples", _positive, "positive"),
    ("eval.sample_steps", _positive, "positive"),
    ("eval.ode_samples", _positive, "positive"),
)
"""The range of every numeric setting that has one: (dotted name, test, what it must be)."""


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config of a run: defaults, then a YAML file, then overrides.

    **Arguments:**

    - `path`: a YAML file, or `None` for the defaults.
    - `overrides`: dotted overrides, see [`adaptive_diffusion.train.Config.with_overrides`][].
    """
    config = Config() if path is None else Config.from_yaml(path)
    return config.with_overrides(overrides)


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, valid: Mapping[str, Any]) -> ValueError:
    return ValueError(f"Unknown config key {key!r}; valid keys here are: {', '.join(valid)}.")


def _from_dict(cls: Any, data: Any, prefix: str) -> Any:
    if data is None:  # an empty YAML section, `optimizer:`
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'!r} must be a mapping, got {data!r}.")
    hints = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise _unknown(name, hints)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value, name + ".")
        else:
            kwargs[key] = _check(value, tp, name)
    return cls(**kwargs)


def _optional(tp: Any) -> tuple[bool, Any]:
    """`(True, X)` for `X | None`, else `(False, tp)`."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _check(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp`, accepting only lossless conversions (int to float)."""
    optional, tp = _optional(tp)
    if value is None and optional:
        return None
    bad = ValueError(f"Config key {key!r} expects {_describe(tp, optional)}, got {value!r}.")
    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `1e-4` without a decimal point as a string.
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"Unsupported config field type {tp!r} for {key!r}.")


def _parse(text: str, tp: Any, key: str) -> Any:
    """The override text `text` parsed as type `tp`."""
    optional, inner = _optional(tp)
    if optional and text.lower() in ("none", "null", "~"):
        return None
    bad = ValueError(f"Override {key}={text!r}: expected {_describe(inner, optional)}.")
    if inner is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise bad
    if inner is int:
        try:
            return int(text)
        except ValueError:
            raise bad from None
    if inner is float:
        try:
            return float(text)
        except ValueError:
            raise bad from None
    if typing.get_origin(inner) is Literal:
        for choice in typing.get_args(inner):
            if str(choice) == text:
                return choice
        raise bad
    return _check(text, tp, key)


def _describe(tp: Any, optional: bool) -> str:
    if typing.get_origin(tp) is Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    else:
        text = f"a value of type {getattr(tp, '__name__', tp)}"
    return text + " or None" if optional else text
