import math

import jax
import pytest

from adaptive_diffusion import demo


@pytest.mark.slow
def test_short_training_run_beats_the_uniform_model():
    # 17 grey levels: a uniform model has log2(17) = 4.09 bits/dim. 2000 steps of the demo
    # model (about 25 s here) bring the held-out bound well below it: by more than 0.5 bits
    # plus 3 standard errors of the held-out mean over 297 digits.
    train_x, test_x = demo.digits_split()
    model = demo.train(
        demo.make_model(jax.random.key(0)),
        train_x,
        key=jax.random.key(1),
        steps=2000,
        log=lambda line: None,
    )
    elbo, stderr = demo.evaluate_elbo(model, test_x, key=jax.random.key(2))
    assert elbo + 3 * stderr < math.log2(demo.NUM_LEVELS) - 0.5, (elbo, stderr)
    ode = demo.evaluate_ode(model, test_x[:32], key=jax.random.key(3))
    assert ode.shape == (32,)
    assert math.isfinite(float(ode.mean()))
