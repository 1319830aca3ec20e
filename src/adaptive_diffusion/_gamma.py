r"""Exact Gamma draws, vectorised: Marsaglia–Tsang with the rejected entries redrawn in a
compacted batch.

`jax.random.gamma` runs one rejection loop per entry, each with its own key splits; under
`vmap` that is a batched `while_loop` whose every round draws for every entry. For the
sum-of-Gamma noise of MuLAN's top-$k$ latent (64,000 draws of shape $1/15$ per digits
batch of 128) that is most of the step.

Here every entry gets one Marsaglia–Tsang proposal (Marsaglia & Tsang 2000) for shape
$\alpha = a + 1 \ge 1$: with $d = \alpha - 1/3$, $c = 1/\sqrt{9 d}$, $x \sim \mathcal N(0,
1)$, $v = (1 + c x)^3$, $u \sim \mathcal U(0, 1)$, the value $d v$ is accepted when $v > 0$
and $\log u < x^2/2 + d - d v + d \log v$, and is then exactly $\operatorname{Gamma}(\alpha)$.
For $a = 1/15$ 4.4% are rejected. Up to an eighth of the entries, the rejected ones first,
are gathered and get `rounds` further proposals each, of which the first accepted is kept;
a `while_loop` of whole-array rounds then finishes what is left (an entry whose `rounds`
proposals all failed, probability $0.044^4$, or beyond the gathered eighth), and does not
run at all in most calls. Each entry's value is the first accepted proposal of its own
sequence of independent proposals (which entries get more depends only on earlier
proposals), so the draw is exact. The shape is raised by one and lowered again by
$\operatorname{Gamma}(a) = \operatorname{Gamma}(a + 1)\, U^{1/a}$ (Stuart 1962), valid for
every $a > 0$, which keeps the acceptance high for the small shapes used here.

Measured on 2 CPU cores (128 x 500 draws of shape 1/15, vmapped as in a train step): 3.0
ms against 42.6 ms for `jax.random.gamma` and 0.5 ms for as many Gumbel draws.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def _proposal(key: PRNGKeyArray, d: float, size: int) -> tuple[Float[Array, " n"], Array]:
    """Marsaglia–Tsang proposals `d v` for shape `d + 1/3`, and whether each is accepted."""
    c = 1.0 / (9.0 * d) ** 0.5
    key_x, key_u = jax.random.split(key)
    x = jax.random.normal(key_x, (size,))
    v = (1.0 + c * x) ** 3
    log_u = jnp.log(jax.random.uniform(key_u, (size,)))
    positive = v > 0
    log_v = jnp.log(jnp.where(positive, v, 1.0))
    accepted = positive & (log_u < 0.5 * x * x + d - d * v + d * log_v)
    return d * v, accepted


def gamma(
    key: PRNGKeyArray, a: float, shape: tuple[int, ...], *, rounds: int = 4
) -> Float[Array, "..."]:
    r"""Exact draws of $\operatorname{Gamma}(\text{shape} = a, \text{scale} = 1)$, float32,
    for a Python float $a > 0$; `rounds` proposals go to each compacted rejected entry.

    Float32 represents no positive value below $2^{-126}$: for $a = 1/15$ the mass
    $P(G < 2^{-126}) \approx 0.3\%$ comes out as 0 (or a subnormal), as for
    `jax.random.gamma`; it is immaterial to sums of such draws."""
    if not a > 0:
        raise ValueError(f"gamma needs a shape parameter a > 0, got {a}.")
    size = 1
    for n in shape:
        size *= n
    d = a + 1.0 - 1.0 / 3.0
    key_first, key_second, key_rest, key_boost = jax.random.split(key, 4)
    value, accepted = _proposal(key_first, d, size)
    # Up to `batch` rejected entries, gathered by a top-k of the rejection flags (cheaper
    # than `nonzero` on XLA:CPU), get `rounds` proposals each; the first accepted one is
    # kept. Accepted entries the top-k picks up when fewer are rejected keep their value.
    batch = min(size, max(16, size // 8))
    _, index = jax.lax.top_k((~accepted).astype(jnp.float32), batch)
    fresh, fresh_accepted = _proposal(key_second, d, rounds * batch)
    fresh, fresh_accepted = fresh.reshape(rounds, batch), fresh_accepted.reshape(rounds, batch)
    first = jnp.take_along_axis(fresh, jnp.argmax(fresh_accepted, axis=0)[None], 0)[0]
    redrawn = ~accepted[index]
    value = value.at[index].set(jnp.where(redrawn, first, value[index]))
    accepted = accepted.at[index].set(accepted[index] | jnp.any(fresh_accepted, axis=0))

    def redraw(carry):
        key, value, accepted = carry
        key, key_round = jax.random.split(key)
        fresh, fresh_accepted = _proposal(key_round, d, size)
        return key, jnp.where(accepted, value, fresh), accepted | fresh_accepted

    _, value, _ = jax.lax.while_loop(
        lambda carry: ~jnp.all(carry[2]), redraw, (key_rest, value, accepted)
    )
    log_boost = jnp.log1p(-jax.random.uniform(key_boost, (size,))) / a
    return (value * jnp.exp(log_boost)).reshape(shape)
