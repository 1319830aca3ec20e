"""The process kinds of the training config, in one registry.

`process.kind` names an entry of `PROCESS_KINDS`; the entry builds the process and says
which `process.*` options it reads and which schedules it offers. Adding a family to the
training stack is one entry here (its process is one file in `_processes/`). An unknown
kind, an unknown schedule, or a non-default value of an option the kind does not read is
an error naming it, raised when the config is made.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Array, PRNGKeyArray

from .._covariance import GFFCovariance, LearnedGFFCovariance
from .._latents import (
    AbstractLatent,
    CategoricalLatent,
    GaussianLatent,
    NoLatent,
    SumOfGammaPerturbation,
    TopKLatent,
)
from .._likelihood import (
    AbstractDequantization,
    ProcessDequantization,
    TruncatedNormalDequantization,
    UniformDequantization,
)
from .._losses import AbstractTimeSampler, AntitheticTimes, LikelihoodWeightedTimes, StepTimes
from .._noise import (
    AbstractNoise,
    ExponentialNoise,
    GaussianNoise,
    GeneralizedGaussianNoise,
    GumbelNoise,
    LaplaceNoise,
    StudentTNoise,
    UniformNoise,
)
from .._processes import (
    ALDA,
    CLD,
    DDPM,
    MALDA,
    VP,
    AbstractLinearMDM,
    AbstractLinearProcess,
    AbstractProcess,
    LatentDiffusion,
    LearnedMDM,
    MuLAN,
    NonIsotropicVP,
    cosine_betas,
    linear_betas,
    require_capability,
)
from .._schedules import (
    AbstractLatentSchedule,
    AbstractSchedule,
    CosineSchedule,
    FixedLatentSchedule,
    LearnedSchedule,
    LinearSchedule,
    MonotoneScheduleNetwork,
    PolynomialScheduleNetwork,
)
from ..nn import MLPEncoder
from ._autoencoder_files import load_autoencoder


@runtime_checkable
class ProcessConfig(Protocol):
    """What the registry reads of the config's `process` section (`train.ProcessConfig`)."""

    @property
    def kind(self) -> str: ...

    @property
    def schedule(self) -> str: ...

    @property
    def gamma_min(self) -> float: ...

    @property
    def times(self) -> str: ...

    @property
    def gamma_max(self) -> float: ...

    @property
    def endpoints(self) -> str: ...

    @property
    def power(self) -> float: ...

    @property
    def learn_covariance(self) -> bool: ...

    @property
    def latent(self) -> str: ...

    @property
    def latent_size(self) -> int: ...

    @property
    def latent_tau(self) -> float: ...

    @property
    def encoder(self) -> str: ...

    @property
    def diffusion(self) -> str: ...

    @property
    def num_aux(self) -> int: ...

    @property
    def aux_init(self) -> str: ...

    @property
    def mixed_score(self) -> float: ...

    @property
    def noise(self) -> str: ...

    @property
    def noise_shape(self) -> float: ...

    @property
    def betas(self) -> str: ...

    @property
    def num_steps(self) -> int: ...

    @property
    def autoencoder(self) -> str: ...


Builder = Callable[[ProcessConfig, tuple[int, ...], PRNGKeyArray, PRNGKeyArray], AbstractProcess]
"""`build(config, data_shape, key_schedule, key_encoder) -> process`."""


@dataclasses.dataclass(frozen=True)
class ProcessKind:
    """One family of the training config.

    **Fields:**

    - `build`: `build(config, data_shape, key_schedule, key_encoder) -> process`.
    - `options`: the `process.*` fields it reads, besides `kind`, `parameterization` and
      `autoencoder` (every kind's).
    - `schedules`: the values `process.schedule` may take.
    - `times`: `times(config)`, the time sampler of the bound and the denoising loss for
      a kind that does not read `process.times` (VDM's antithetic times by default).
    """

    build: Builder
    options: frozenset[str]
    schedules: tuple[str, ...]
    times: Callable[[ProcessConfig], AbstractTimeSampler] = lambda cfg: AntitheticTimes()


def _fixed_ends(factory: Callable[[float, float], AbstractSchedule]) -> Callable:
    def build(cfg: ProcessConfig, key: PRNGKeyArray) -> AbstractSchedule:
        if cfg.endpoints == "learned":
            raise ValueError(
                f"process.schedule={cfg.schedule} has fixed endpoints; use "
                "process.schedule=learned to learn them, or process.endpoints=default."
            )
        return factory(cfg.gamma_min, cfg.gamma_max)

    return build


def _learn_endpoints(cfg: ProcessConfig, default: bool) -> bool:
    """Whether a schedule with learnable endpoints learns them (`default`: its family's)."""
    return default if cfg.endpoints == "default" else cfg.endpoints == "learned"


SCALAR_SCHEDULES: Mapping[str, Callable[[ProcessConfig, PRNGKeyArray], AbstractSchedule]] = {
    "linear": _fixed_ends(LinearSchedule),
    "cosine": _fixed_ends(CosineSchedule),
    "learned": lambda cfg, key: LearnedSchedule(
        key=key,
        gamma_min=cfg.gamma_min,
        gamma_max=cfg.gamma_max,
        learn_endpoints=_learn_endpoints(cfg, default=True),
    ),
}
"""The scalar log-SNR schedules by name."""

LATENTS: Mapping[str, Callable[..., AbstractLatent]] = {
    "topk": TopKLatent,
    "gaussian": GaussianLatent,
    "categorical": CategoricalLatent,
    "none": NoLatent,
}
"""MuLAN's latent families by name."""


def _vp(cfg: ProcessConfig, shape: tuple[int, ...], key_schedule, key_encoder) -> VP:
    return VP(SCALAR_SCHEDULES[cfg.schedule](cfg, key_schedule))


def _nonisotropic(
    cfg: ProcessConfig, shape: tuple[int, ...], key_schedule, key_encoder
) -> NonIsotropicVP:
    covariance = LearnedGFFCovariance if cfg.learn_covariance else GFFCovariance
    schedule = SCALAR_SCHEDULES[cfg.schedule](cfg, key_schedule)
    return NonIsotropicVP(schedule, covariance(shape, power=cfg.power))


def _latent(cfg: ProcessConfig) -> AbstractLatent:
    family = LATENTS[cfg.latent]
    options = {}
    if cfg.latent_size:
        if family is NoLatent:
            raise ValueError("process.latent_size must be 0 for latent=none.")
        options["size"] = cfg.latent_size
    if family is TopKLatent:
        options["perturbation"] = SumOfGammaPerturbation(tau=cfg.latent_tau)
    elif cfg.latent_tau != SumOfGammaPerturbation.tau:
        raise ValueError(
            f"process.latent_tau is the top-k latent's noise temperature; latent="
            f"{cfg.latent} has none. Remove it, or set process.latent=topk."
        )
    return family(**options)


def _network_schedule(family: type) -> Callable:
    def build(cfg: ProcessConfig, latent: AbstractLatent, shape: tuple[int, ...], key):
        return family(
            latent.size,
            shape,
            key=key,
            gamma_min=cfg.gamma_min,
            gamma_max=cfg.gamma_max,
            learn_endpoints=_learn_endpoints(cfg, default=False),
        )

    return build


def _fixed_schedule(name: str) -> Callable:
    def build(cfg: ProcessConfig, latent: AbstractLatent, shape: tuple[int, ...], key):
        return FixedLatentSchedule(SCALAR_SCHEDULES[name](cfg, key))

    return build


LATENT_SCHEDULES: Mapping[str, Callable[..., AbstractLatentSchedule]] = {
    "polynomial": _network_schedule(PolynomialScheduleNetwork),
    "learned": _network_schedule(MonotoneScheduleNetwork),
    "linear": _fixed_schedule("linear"),
    "cosine": _fixed_schedule("cosine"),
}
"""MuLAN's schedule families by name: `build(config, latent, data_shape, key)`."""


def _mulan(cfg: ProcessConfig, shape: tuple[int, ...], key_schedule, key_encoder) -> MuLAN:
    latent = _latent(cfg)
    encoder = None
    if cfg.encoder == "mlp" and latent.num_params:
        encoder = MLPEncoder(shape, latent.num_params, key=key_encoder)
    return MuLAN(
        shape,
        key=key_encoder,
        gamma_min=cfg.gamma_min,
        gamma_max=cfg.gamma_max,
        latent=latent,
        schedule=LATENT_SCHEDULES[cfg.schedule](cfg, latent, shape, key_schedule),
        encoder=encoder,
    )


def _mdm_options(cfg: ProcessConfig) -> dict[str, Any]:
    """The keyword arguments every MDM family takes from the config."""
    return {
        "gamma_min": cfg.gamma_min,
        "learn_aux_init": cfg.aux_init == "learned",
        "learn_time_min": cfg.endpoints == "learned",
        "mixed_score": cfg.mixed_score or None,
    }


def _fixed_mdm(factory: Callable[..., AbstractLinearMDM], num_aux: bool) -> Callable:
    def build(cfg: ProcessConfig, key: PRNGKeyArray) -> AbstractLinearMDM:
        if cfg.num_aux and not num_aux:
            raise ValueError(
                f"process.diffusion={cfg.diffusion} has a fixed number of variables; "
                "set process.num_aux=0."
            )
        sizes = {"num_aux": cfg.num_aux} if cfg.num_aux else {}
        return factory(**_mdm_options(cfg), **sizes)

    return build


MDM_DIFFUSIONS: Mapping[str, Callable[[ProcessConfig, PRNGKeyArray], AbstractLinearMDM]] = {
    "cld": _fixed_mdm(CLD, num_aux=False),
    "alda": _fixed_mdm(ALDA, num_aux=False),
    "malda": _fixed_mdm(MALDA, num_aux=True),
    "learned": lambda cfg, key: LearnedMDM(cfg.num_aux or 1, key=key, **_mdm_options(cfg)),
}
"""The multivariate diffusions by the names `process.diffusion` takes; `process.num_aux`
sets K where the family allows it (0: the family's default), `process.gamma_min` the
data's negative log-SNR where the bound starts (its t_min), `process.endpoints=learned`
learns that t_min from there, `process.aux_init` whether
q(v_0 | x) is the reference's fixed N(0, 0.01 I) or learned, and `process.mixed_score` the
data variance of the Gaussian denoiser the network's output is added to (0: none)."""


def _mdm(
    cfg: ProcessConfig, shape: tuple[int, ...], key_schedule, key_encoder
) -> AbstractLinearMDM:
    return MDM_DIFFUSIONS[cfg.diffusion](cfg, key_schedule)


NOISES: Mapping[str, Callable[[float], AbstractNoise]] = {
    "gaussian": lambda shape: GaussianNoise(),
    "laplace": lambda shape: LaplaceNoise(),
    "uniform": lambda shape: UniformNoise(),
    "gumbel": lambda shape: GumbelNoise(),
    "exponential": lambda shape: ExponentialNoise(),
    "student_t": lambda shape: StudentTNoise(df=shape or StudentTNoise.df),
    "generalized_gaussian": lambda shape: GeneralizedGaussianNoise(
        power=shape or GeneralizedGaussianNoise.power
    ),
}
"""DDPM's noise families by the names `process.noise` takes, built from
`process.noise_shape` (Student-t's degrees of freedom, the generalised Gaussian's power;
0 for the family's default)."""

_SHAPED_NOISES = ("student_t", "generalized_gaussian")

BETAS: Mapping[str, Callable[[int], Array]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}
"""DDPM's beta schedules by the names `process.betas` takes, for `process.num_steps` T."""


def _ddpm(cfg: ProcessConfig, shape: tuple[int, ...], key_schedule, key_encoder) -> DDPM:
    return DDPM(BETAS[cfg.betas](cfg.num_steps), NOISES[cfg.noise](cfg.noise_shape))


_SCHEDULE_OPTIONS = frozenset({"schedule", "gamma_min", "gamma_max", "endpoints"})

PROCESS_KINDS: Mapping[str, ProcessKind] = {
    "vp": ProcessKind(_vp, _SCHEDULE_OPTIONS, tuple(SCALAR_SCHEDULES)),
    "nonisotropic": ProcessKind(
        _nonisotropic,
        _SCHEDULE_OPTIONS | {"power", "learn_covariance"},
        tuple(SCALAR_SCHEDULES),
    ),
    "mulan": ProcessKind(
        _mulan,
        _SCHEDULE_OPTIONS | {"latent", "latent_size", "latent_tau", "encoder"},
        tuple(LATENT_SCHEDULES),
    ),
    "mdm": ProcessKind(
        _mdm,
        frozenset(
            {"diffusion", "num_aux", "times", "gamma_min", "endpoints", "aux_init", "mixed_score"}
        ),
        (),
    ),
    "ddpm": ProcessKind(
        _ddpm,
        frozenset({"noise", "noise_shape", "betas", "num_steps"}),
        (),
        lambda cfg: StepTimes(cfg.num_steps),
    ),
}
"""The process kinds by the names `process.kind` takes:

- `vp`: `ad.VP` (VDM) with a scalar schedule;
- `nonisotropic`: `ad.NonIsotropicVP` with a fixed or learned GFF covariance (NI-DDPM);
- `mulan`: `ad.MuLAN`, a per-dimension schedule conditioned on a latent;
- `mdm`: a linear multivariate diffusion with auxiliary variables (`ad.CLD`, `ad.ALDA`,
  `ad.MALDA`, `ad.LearnedMDM`) on its own linear beta schedule;
- `ddpm`: discrete-time `ad.DDPM` with a noise family of `NOISES` on `num_steps` betas
  of `BETAS`, trained by the denoising loss on DDPM's uniform steps (`ad.StepTimes`).
"""

_ENCODERS = ("conv", "mlp")


def _likelihood_times(process: AbstractLinearMDM) -> AbstractTimeSampler:
    return LikelihoodWeightedTimes(process.beta_min, process.beta_max)


TIME_SAMPLERS: Mapping[str, Callable[..., AbstractTimeSampler]] = {
    "antithetic": lambda process: AntitheticTimes(),
    "likelihood": _likelihood_times,
}
"""The bound's time samplers by the names `process.times` takes, each built for the
process (the likelihood weighting reads an MDM's own $\beta$; `process.times` is an
option of `kind=mdm` only, so no other process reaches it)."""

DEQUANTIZATIONS: Mapping[str, AbstractDequantization] = {
    "process": ProcessDequantization(),
    "truncated_normal": TruncatedNormalDequantization(),
    "uniform": UniformDequantization(),
}
"""The ODE bound's dequantisations by the names `eval.dequantization` and the command
line use."""


def check_process_config(cfg: ProcessConfig, changed: Iterable[str]) -> None:
    """Raise `ValueError` naming the key if `cfg` asks for an unknown kind, schedule,
    latent or encoder, or if an option in `changed` (the fields that differ from their
    defaults) is one its kind does not read."""
    if cfg.kind not in PROCESS_KINDS:
        raise ValueError(
            f"Unknown process.kind {cfg.kind!r}; the kinds are: {', '.join(PROCESS_KINDS)}."
        )
    kind = PROCESS_KINDS[cfg.kind]
    if "schedule" in kind.options and cfg.schedule not in kind.schedules:
        raise ValueError(
            f"process.schedule={cfg.schedule!r} is not a schedule of kind={cfg.kind}; "
            f"use one of {', '.join(kind.schedules)}."
        )
    for name in changed:
        if name not in ("kind", "parameterization", "autoencoder", *kind.options):
            readers = [k for k, entry in PROCESS_KINDS.items() if name in entry.options]
            raise ValueError(
                f"process.{name} is not an option of kind={cfg.kind}; it applies to "
                f"kind={' or '.join(readers)} only. Remove it, or change the kind."
            )
    if cfg.latent not in LATENTS:
        raise ValueError(f"Unknown process.latent {cfg.latent!r}; use one of {', '.join(LATENTS)}.")
    if cfg.diffusion not in MDM_DIFFUSIONS:
        raise ValueError(
            f"Unknown process.diffusion {cfg.diffusion!r}; use one of {', '.join(MDM_DIFFUSIONS)}."
        )
    if cfg.times not in TIME_SAMPLERS:
        raise ValueError(
            f"Unknown process.times {cfg.times!r}; use one of {', '.join(TIME_SAMPLERS)}."
        )
    if cfg.noise not in NOISES:
        raise ValueError(f"Unknown process.noise {cfg.noise!r}; use one of {', '.join(NOISES)}.")
    if cfg.noise_shape and cfg.noise not in _SHAPED_NOISES:
        raise ValueError(
            f"process.noise_shape is the shape of {' and '.join(_SHAPED_NOISES)}; noise="
            f"{cfg.noise} has none. Remove it, or choose one of those families."
        )
    if cfg.betas not in BETAS:
        raise ValueError(f"Unknown process.betas {cfg.betas!r}; use one of {', '.join(BETAS)}.")
    if cfg.num_steps < 2:
        raise ValueError(f"process.num_steps is DDPM's T >= 2, got {cfg.num_steps}.")
    if cfg.encoder not in _ENCODERS:
        raise ValueError(
            f"Unknown process.encoder {cfg.encoder!r}; use one of {', '.join(_ENCODERS)}."
        )


def build_process(
    cfg: ProcessConfig,
    data_shape: tuple[int, ...],
    key_schedule: PRNGKeyArray,
    key_encoder: PRNGKeyArray,
) -> AbstractProcess:
    """The process of `cfg`, for data of shape `data_shape`; with `cfg.autoencoder`, the
    kind's process built for the latents' shape, as an `ad.LatentDiffusion`."""
    build = PROCESS_KINDS[cfg.kind].build
    if not cfg.autoencoder:
        return build(cfg, tuple(data_shape), key_schedule, key_encoder)
    autoencoder = load_autoencoder(cfg.autoencoder)
    if autoencoder.data_shape != tuple(data_shape):
        raise ValueError(
            f"process.autoencoder {cfg.autoencoder!r} encodes images of shape "
            f"{autoencoder.data_shape}, but the data have shape {tuple(data_shape)}; train "
            "one on this data set with `adaptive-diffusion autoencoder --config ...`."
        )
    process = build(cfg, autoencoder.latent_shape, key_schedule, key_encoder)
    linear = require_capability(process, AbstractLinearProcess, "Latent diffusion")
    return LatentDiffusion(linear, autoencoder)


def build_times(cfg: ProcessConfig, process: AbstractProcess) -> AbstractTimeSampler:
    """The time sampler of `cfg` for its `process`: `process.times` where the kind reads
    it, else the kind's own (DDPM's uniform steps; VDM's antithetic times)."""
    kind = PROCESS_KINDS[cfg.kind]
    return TIME_SAMPLERS[cfg.times](process) if "times" in kind.options else kind.times(cfg)
