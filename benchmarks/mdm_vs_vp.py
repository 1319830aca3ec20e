"""VP against the multivariate diffusions (MDM: CLD, ALDA, MALDA, learned Q and D) at equal
network, optimiser, batch, steps and seeds: held-out bits/dim.

Every model is the digits job (`digits.yaml`, the MLP 256 x 3 with the input's Fourier
features matched to the data's bins) with only the process changed. VP keeps VDM's
learned schedule, which learns its endpoints. An MDM's diffusion is fixed (or, for
`learned_*`, learned) but where its bound starts is not: `gamma_min`, the data
coordinate's negative log-SNR at $t_{\\min}$, is each family's measured best on digits
(`FAMILY_GAMMA_MIN`, chosen by the `<family>_gamma<g>` sweep at 2000 steps, seed 0: the
measured counterpart of VP's learned endpoint). On `--data patches` (8 x 8 RGB patches of
scikit-learn's sample photos, 256 levels) every model trains without Fourier features, as
the shipped patches configs do.

Each trained EMA model is evaluated as `_compare.py` says (ELBO and ODE bound); an MDM's
auxiliary term is $\\mathbb E \\log q(v_0 \\mid x)$, the price of its auxiliary variables,
which its decoder of $v_0$ mostly gives back.

    python benchmarks/mdm_vs_vp.py --steps 2000 --seeds 0 --models cld_gamma-9.5 \\
        cld_gamma-5.5 cld_gamma-3.5 --out benchmarks/results/mdm_gamma_sweep.json
    python benchmarks/mdm_vs_vp.py --data digits --steps 2000 --seeds 0 1 2
    python benchmarks/mdm_vs_vp.py --steps 2000 --seeds 0 1 2 --models cld_auxlearned \\
        learned_k1_auxlearned --ode-examples 32 --ode-samples 1 --elbo-repeats 16
"""

import functools
from collections.abc import Callable

import numpy as np

from _compare import main
from adaptive_diffusion.data import levels_to_centres
from adaptive_diffusion.train import config_path, load_config, make_source


_MDM = ["process.kind=mdm", "process.times=likelihood", "process.parameterization=eps"]
_FAMILIES = {
    "cld": ["process.diffusion=cld"],
    "alda": ["process.diffusion=alda"],
    "malda": ["process.diffusion=malda", "process.num_aux=2"],
    "learned_k1": ["process.diffusion=learned", "process.num_aux=1"],
    "learned_k2": ["process.diffusion=learned", "process.num_aux=2"],
}
FAMILY_GAMMA_MIN = {
    "cld": -3.5,
    "alda": -0.5,
    "malda": -2.5,
    "learned_k1": -2.5,
    "learned_k2": -2.5,
}
"""Each family's `gamma_min`: the best held-out ELBO of the sweep over `GAMMA_GRID` at 2000
steps, seed 0 (bits/dim; docs/benchmarks.md has the whole sweep). ALDA's is the grid's edge: it
was still falling there (3.86 at -0.5)."""

GAMMA_GRID = (-9.5, -7.5, -5.5, -4.5, -3.5, -2.5, -1.5, -0.5)

TLEARNED_START = -5.5
"""Where a learned start (`<family>_tlearned`) begins: one `gamma_min` for every family."""


def _mdm(family: str, gamma_min: float, *extra: str) -> list[str]:
    """The overrides of one MDM model: `family`'s diffusion, its bound starting at
    `gamma_min`, and `extra` options."""
    return [*_MDM, *_FAMILIES[family], f"process.gamma_min={gamma_min}", *extra]


_LEARNED_START = "process.endpoints=learned"


@functools.cache
def second_moment(data: str) -> float:
    """$\\mathbb E[x^2]$ over the pixels of `data`'s training split, on its bin centres: the
    variance $\\sigma^2$ of the zero-mean Gaussian whose exact denoiser
    (`ad.AbstractLinearMDM.gaussian_eps`) a `<family>_mixed` model's network is added to
    (digits: 0.635, patches: 0.449)."""
    config = load_config(config_path("digits"), DATA[data])
    train = make_source(config.data, "train")
    return float(np.mean(levels_to_centres(train[np.arange(len(train))], train.num_levels) ** 2))


def _mixed(family: str, gamma_min: float, *extra: str) -> Callable[[str], list[str]]:
    """`_mdm(family, gamma_min, *extra)` with the mixed score of the data it runs on."""
    return lambda data: _mdm(
        family, gamma_min, f"process.mixed_score={second_moment(data)}", *extra
    )


MODELS = {
    "vp": ["process.kind=vp", "process.schedule=learned"],
    **{name: _mdm(name, FAMILY_GAMMA_MIN[name]) for name in _FAMILIES},
    **{f"{name}_gamma{g}": _mdm(name, g) for name in _FAMILIES for g in GAMMA_GRID},
    # The same with q(v_0 | x) learned and x-conditioned (`process.aux_init=learned`) in
    # place of the reference's fixed N(0, 0.01 I).
    **{
        f"{name}_auxlearned": _mdm(name, FAMILY_GAMMA_MIN[name], "process.aux_init=learned")
        for name in _FAMILIES
    },
    # Where the bound starts learned (`process.endpoints=learned`, the counterpart of VP's
    # learned endpoints) from one common gamma_min, or from g, in place of the sweep.
    **{
        f"{name}_tlearned{g}": _mdm(name, g, _LEARNED_START)
        for name in _FAMILIES
        for g in GAMMA_GRID
    },
    **{f"{name}_tlearned": _mdm(name, TLEARNED_START, _LEARNED_START) for name in _FAMILIES},
    # The network predicts the residual from the exact denoiser of a zero-mean Gaussian
    # model of the data (Dockhorn et al.'s mixed score; `process.mixed_score`), from the
    # family's swept start or from a learned one.
    **{f"{name}_mixed": _mixed(name, FAMILY_GAMMA_MIN[name]) for name in _FAMILIES},
    **{
        f"{name}_mixed_tlearned": _mixed(name, TLEARNED_START, _LEARNED_START) for name in _FAMILIES
    },
}
DATA = {
    "digits": [],
    "patches": ["data.source=patches", "data.patch_size=8", "network.fourier=none"],
}


if __name__ == "__main__":
    main(__doc__.splitlines()[0], MODELS, DATA, list(_FAMILIES) + ["vp"], "mdm_vs_vp")
