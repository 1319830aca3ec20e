r"""Exact Gamma draws of small shape, vectorised: Ahrens–Dieter's GS rejection sampler with
the rejected entries redrawn in a compacted batch.

`jax.random.gamma` runs one rejection loop per entry, each with its own key splits; under
`vmap` that is a batched `while_loop` whose every round draws for every entry. For the
sum-of-Gamma noise of MuLAN's top-$k$ latent (64,000 draws of shape $1/15$ per digits
batch of 128) that was most of the train step.

**Proposal** (Ahrens & Dieter 1974, algorithm GS, for $0 < a \le 1$). With
$b = 1 + a/e$ and $u, w \sim \mathcal U(0, 1)$, $p = b u$: if $p \le 1$, $x = p^{1/a}$,
accepted when $w \le e^{-x}$; otherwise $x = -\log((b - p)/a)$, accepted when
$w \le x^{a - 1}$. An accepted $x$ is exactly $\operatorname{Gamma}(a)$; the acceptance
is $\Gamma(a + 1)/b$, 94.3% for $a = 1/15$. Two uniforms per proposal and no normal.

**Vectorised rejection.** Every entry gets one proposal. Up to an eighth of the entries,
the rejected ones first, are gathered and get `rounds` further proposals each, of which
the first accepted is kept; a `while_loop` of whole-array rounds finishes what is left
(an entry whose `rounds` proposals all failed, probability $0.057^4$ for $a = 1/15$, or
one beyond the gathered eighth), and does not run at all in most calls. Each entry's
value is the first accepted proposal of its own sequence of independent proposals
(which entries get more depends only on earlier proposals), so the draw is exact.

Measured by `benchmarks/gamma_draws.py`; the figures are in `SumOfGammaPerturbation`.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def _proposal(key: PRNGKeyArray, a: float, size: int) -> tuple[Float[Array, " n"], Array]:
    """GS proposals for shape `a`, and whether each is accepted."""
    b = 1.0 + a / math.e
    u, w = jax.random.uniform(key, (2, size))
    p, log_w = b * u, jnp.log1p(-w)
    lower = p <= 1.0
    x_lower = jnp.exp(jnp.log(jnp.where(lower, p, 1.0)) / a)
    x_upper = -jnp.log(jnp.where(lower, 1.0, b - p) / a)
    accepted = jnp.where(lower, log_w <= -x_lower, log_w <= (a - 1.0) * jnp.log(x_upper))
    return jnp.where(lower, x_lower, x_upper), accepted


def gamma(
    key: PRNGKeyArray, a: float, shape: tuple[int, ...], *, rounds: int = 4
) -> Float[Array, "..."]:
    r"""Exact draws of $\operatorname{Gamma}(\text{shape} = a, \text{scale} = 1)$, float32,
    for a Python float $0 < a \le 1$; `rounds` proposals go to each compacted rejected
    entry.

    Float32 represents no positive value below $2^{-126}$: for $a = 1/15$ the mass
    $P(G < 2^{-126}) \approx 0.3\%$ comes out as 0 (or a subnormal), as for
    `jax.random.gamma`; it is immaterial to sums of such draws."""
    if not 0 < a <= 1:
        raise ValueError(f"gamma draws shapes 0 < a <= 1 (GS), got {a}.")
    size = math.prod(shape)
    key_first, key_second, key_rest = jax.random.split(key, 3)
    value, accepted = _proposal(key_first, a, size)
    # Up to `batch` rejected entries, gathered by a top-k of the rejection flags (cheaper
    # than `nonzero` on XLA:CPU), get `rounds` proposals each; the first accepted one is
    # kept. Accepted entries the top-k picks up when fewer are rejected keep their value.
    batch = min(size, max(16, size // 8))
    _, index = jax.lax.top_k((~accepted).astype(jnp.float32), batch)
    fresh, fresh_accepted = _proposal(key_second, a, rounds * batch)
    fresh, fresh_accepted = fresh.reshape(rounds, batch), fresh_accepted.reshape(rounds, batch)
    first = jnp.take_along_axis(fresh, jnp.argmax(fresh_accepted, axis=0)[None], 0)[0]
    redrawn = ~accepted[index]
    value = value.at[index].set(jnp.where(redrawn, first, value[index]))
    accepted = accepted.at[index].set(accepted[index] | jnp.any(fresh_accepted, axis=0))

    def redraw(carry):
        key, value, accepted = carry
        key, key_round = jax.random.split(key)
        fresh, fresh_accepted = _proposal(key_round, a, size)
        return key, jnp.where(accepted, value, fresh), accepted | fresh_accepted

    _, value, _ = jax.lax.while_loop(
        lambda carry: ~jnp.all(carry[2]), redraw, (key_rest, value, accepted)
    )
    return value.reshape(shape)
