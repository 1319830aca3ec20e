r"""The error budget of a test-set figure computed by an ODE solve: its solver bias against
the confidence interval of the mean, and the loosest tolerance that keeps it negligible.

A per-example probability-flow estimate carries a solver error and, with a Hutchinson
trace, the probe's variance. Over a test set of $n$ examples the variance averages out and
the confidence interval of the mean, half-width $h = 1.96\,s/\sqrt n$, covers it; the
solver's bias $b$ does not average out. Solving the first $m$ examples again at a
tighter tolerance with the same draws (dequantisation, auxiliary state, probes) leaves
the solver's error alone in each paired difference, whose mean estimates $b$ with a
standard error $s_b/\sqrt m$. A bias within a tenth of $h$ is negligible: it moves the
coverage of a 95% interval from 95.0% to 94.9%.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np


AUTO_TOLERANCES: tuple[float, ...] = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
"""The tolerances `choose_tolerance` tries by default, loosest first."""


@dataclasses.dataclass(frozen=True)
class SolverError:
    r"""The solver's error in a mean over examples, from paired re-solves.

    **Fields:** `tolerance` (of the figure) and `reference_tolerance` (of the re-solve);
    `bias`, the mean over the checked examples of the figure less the re-solve's, and
    `stderr`, its standard error, in the figure's unit; `num_examples` checked; `budget`,
    the largest $|\text{bias}| + 2\,\text{stderr}$ accepted; `grid_steps`, the steps of
    the fixed grid tuned at `tolerance` that the figure was solved on (`tuned_grid`), or
    `None` for an adaptive solve at `tolerance`.
    """

    tolerance: float
    reference_tolerance: float
    bias: float
    stderr: float
    num_examples: int
    budget: float
    grid_steps: int | None = None

    @property
    def within_budget(self) -> bool:
        r"""Whether $|\text{bias}| + 2\,\text{stderr} \le$ `budget`: the bias, at the upper
        end of its own ~95% interval, is within the budget."""
        return abs(self.bias) + 2.0 * self.stderr <= self.budget

    def __str__(self) -> str:
        verdict = "within" if self.within_budget else "OUTSIDE"
        solve = f"tolerance {self.tolerance:.0e}"
        if self.grid_steps is not None:
            solve = f"a {self.grid_steps}-step grid tuned at {solve}"
        return (
            f"solver error on {solve}: {self.bias:+.4f} +- "
            f"{self.stderr:.4f} against {self.reference_tolerance:.0e} on "
            f"{self.num_examples} examples, {verdict} the budget {self.budget:.4f}"
        )

    def as_json(self) -> dict:
        """The fields and `within_budget`, JSON-ready."""
        return {**dataclasses.asdict(self), "within_budget": self.within_budget}


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """`(mean, stderr, half_width)` of the normal 95% interval of the mean of `values`."""
    mean = float(np.mean(values))
    stderr = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return mean, stderr, 1.96 * stderr


def solver_error(
    values: np.ndarray,
    reference: np.ndarray,
    *,
    tolerance: float,
    reference_tolerance: float,
    half_width: float,
    bias_budget: float = 0.1,
) -> SolverError:
    """The error of `values` against `reference`, the same examples (the first
    `len(reference)` of `values`) with the same draws solved at `reference_tolerance`;
    the budget is `bias_budget` times the interval's `half_width`."""
    difference = np.asarray(values)[: len(reference)] - np.asarray(reference)
    bias, stderr, _ = mean_interval(difference)
    return SolverError(
        tolerance, reference_tolerance, bias, stderr, len(difference), bias_budget * half_width
    )


def choose_tolerance(
    figures: Callable[[float], np.ndarray],
    num_examples: int,
    *,
    candidates: Sequence[float] = AUTO_TOLERANCES,
    reference_tolerance: float = 1e-7,
    reference_figures: np.ndarray | None = None,
    bias_budget: float = 0.1,
) -> SolverError:
    r"""The loosest tolerance whose solver bias is within budget for a mean over
    `num_examples` examples.

    `figures(tol)` returns the per-example figures of the checked examples, solved at
    `tol` with the same draws at every call. The reference is solved once,
    `figures(reference_tolerance)` unless `reference_figures` gives it (say, from an
    adaptive solve where `figures` solves on a grid tuned to `tol`); the candidates,
    loosest first, until one passes. The interval's half-width is that of
    the mean over `num_examples` with the spread the candidate's figures show. If no
    candidate passes, the tightest is returned (`within_budget` False).

    **Returns:** the `SolverError` of the chosen tolerance (its `tolerance`).
    """
    if not all(reference_tolerance < tol for tol in candidates):
        raise ValueError(
            f"reference_tolerance={reference_tolerance:g} must be tighter than every "
            f"tolerance tried ({', '.join(f'{t:g}' for t in candidates)})."
        )
    reference = figures(reference_tolerance) if reference_figures is None else reference_figures
    error = None
    for tol in sorted(candidates, reverse=True):
        trial = figures(tol)
        spread = float(np.std(trial, ddof=1))
        error = solver_error(
            trial,
            reference,
            tolerance=tol,
            reference_tolerance=reference_tolerance,
            half_width=1.96 * spread / math.sqrt(num_examples),
            bias_budget=bias_budget,
        )
        if error.within_budget:
            break
    assert error is not None, "no candidate tolerance"
    return error
