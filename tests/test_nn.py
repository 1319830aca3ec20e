import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from adaptive_diffusion.nn import (
    MLPDenoiser,
    UNet,
    fourier_features,
    matched_fourier_exponents,
    sinusoidal_embedding,
)


# Keep this file fast on a CPU: on XLA:CPU every new parameter shape costs a compile of the
# initialiser, and threefry's compiles several times slower than the "rbg" generator's; so
# models are built once per module, from rbg keys, and each is compiled at most twice (a
# forward pass, and a forward-and-gradient pass with dropout on); other shapes are checked
# abstractly, with `eqx.filter_eval_shape`.
COND_DIM = 4


def _key(seed):
    return jr.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def unet():
    # Conditional, with dropout and two heads: shared by all the concrete UNet tests.
    return UNet(
        (3, 16, 16),
        key=_key(1),
        channels=8,
        n_layers=2,
        n_attention_heads=2,
        dropout=0.5,
        cond_dim=COND_DIM,
    )


@pytest.fixture(scope="module")
def mlp_cond():
    return MLPDenoiser((1, 8, 8), key=_key(2), width=32, depth=2, cond_dim=COND_DIM)


def _jit_fast_compile(fn):
    """Like `eqx.filter_jit`, but compiled with XLA's backend optimisations off: these tests
    check values, not speed, and on a CPU this halves the compile time of a UNet's gradient."""

    @functools.partial(
        jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0}
    )
    def jitted(static, dynamic):
        return fn(*eqx.combine(dynamic, static))

    def wrapper(*args):
        dynamic, static = eqx.partition(args, eqx.is_array)
        return jitted(static, dynamic)

    return wrapper


@eqx.filter_jit
def _forward(model, x, t, cond):
    """`jax.vmap(model)` over a batch of examples and times, without a key (inference)."""
    return jax.vmap(lambda x, t: model(x, t, cond))(x, t)


@_jit_fast_compile
def _train_forward_and_grad(model, x, t, cond, key):
    """The outputs with dropout on (one key per example) and the gradient of their mean square
    with respect to the parameters, flattened into one vector."""

    def loss(model):
        keys = jr.split(key, x.shape[0])
        out = jax.vmap(lambda x, t, k: model(x, t, cond, key=k))(x, t, keys)
        return jnp.mean(out**2), out

    (_, out), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
    return out, ravel_pytree(grads)[0]


def _perturb(model, seed, scale=0.1):
    """Adds Gaussian noise to every parameter, so that no layer is zero any more. (In NumPy:
    nothing to compile.)"""
    rng = np.random.default_rng(seed)

    def perturb(p):
        p = np.asarray(p)
        return jnp.asarray(p + scale * rng.standard_normal(p.shape, dtype=p.dtype))

    params, static = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(jax.tree.map(perturb, params), static)


def _inputs(shape, batch=3, seed=10):
    kx, kt = jr.split(_key(seed))
    x = jr.normal(kx, (batch, *shape))
    t = jr.uniform(kt, (batch,))
    return x, t


def _check_call_shapes(model, shape, cond):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    xs = jax.ShapeDtypeStruct((5, *shape), jnp.float32)
    # One example, no batch axis, `t` a Python float or a 0-d array.
    for t in (0.5, jnp.array(0.5)):
        out = eqx.filter_eval_shape(lambda m, x: m(x, t, cond), model, x)
        assert out.shape == shape
        assert out.dtype == jnp.float32
    # A batch, with vmap.
    out = eqx.filter_eval_shape(lambda m, xs: jax.vmap(lambda x: m(x, 0.5, cond))(xs), model, xs)
    assert out.shape == (5, *shape)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    "shape, cond", [((1, 8, 8), None), ((3, 16, 16), None), ((3, 16, 16), jnp.ones(COND_DIM))]
)
def test_unet_shapes_and_dtypes(shape, cond):
    # Built and run abstractly: no memory, no compile.
    cond_dim = 0 if cond is None else COND_DIM
    model = eqx.filter_eval_shape(
        lambda: UNet(shape, key=_key(0), channels=8, n_layers=1, cond_dim=cond_dim)
    )
    _check_call_shapes(model, shape, cond)


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (3, 16, 16)])
def test_mlp_shapes_and_dtypes(shape):
    model = eqx.filter_eval_shape(lambda: MLPDenoiser(shape, key=_key(0), width=32))
    _check_call_shapes(model, shape, None)


@pytest.mark.parametrize("name", ["unet", "mlp_cond"])
def test_untrained_output_is_zero(name, request):
    model = request.getfixturevalue(name)
    x, t = _inputs(model.data_shape)
    out = _forward(model, x, t, jnp.ones(COND_DIM))
    assert out.shape == x.shape
    assert out.dtype == jnp.float32
    assert jnp.all(out == 0)


@pytest.mark.parametrize("name", ["unet", "mlp_cond"])
def test_gradients_finite_and_nonzero(name, request):
    model = _perturb(request.getfixturevalue(name), 20)
    x, t = _inputs(model.data_shape)
    out, grads = _train_forward_and_grad(model, x, t, jnp.ones(COND_DIM), _key(0))
    assert out.shape == x.shape
    grads = np.asarray(grads)
    assert np.all(np.isfinite(grads))
    assert np.any(grads != 0)


@pytest.mark.parametrize("name", ["unet", "mlp_cond"])
def test_conditioning_and_time_change_output(name, request):
    model = request.getfixturevalue(name)
    x, t = _inputs(model.data_shape)
    cond_a = jnp.zeros(COND_DIM)
    cond_b = jnp.linspace(-1.0, 1.0, COND_DIM)
    # Untrained: the output is zero whatever the conditioning.
    assert jnp.all(_forward(model, x, t, cond_b) == 0)

    model = _perturb(model, 21)
    out_a = _forward(model, x, t, cond_a)
    out_b = _forward(model, x, t, cond_b)
    out_t = _forward(model, x, 1.0 - t, cond_a)
    assert jnp.all(jnp.isfinite(out_a))
    assert not jnp.allclose(out_a, out_b, atol=1e-4)
    assert not jnp.allclose(out_a, out_t, atol=1e-4)


def test_conditioning_argument_checked(unet, mlp_cond):
    for model in (unet, mlp_cond):
        x = jax.ShapeDtypeStruct(model.data_shape, jnp.float32)
        with pytest.raises(ValueError, match="cond"):
            eqx.filter_eval_shape(lambda m, x: m(x, 0.5), model, x)
        with pytest.raises(ValueError, match="cond"):
            eqx.filter_eval_shape(lambda m, x: m(x, 0.5, jnp.ones(COND_DIM + 1)), model, x)
    unconditional = (
        eqx.filter_eval_shape(lambda: UNet((1, 8, 8), key=_key(0), channels=8, n_layers=1)),
        eqx.filter_eval_shape(lambda: MLPDenoiser((64,), key=_key(0), width=32)),
    )
    for model in unconditional:
        x = jax.ShapeDtypeStruct(model.data_shape, jnp.float32)
        with pytest.raises(ValueError, match="cond"):
            eqx.filter_eval_shape(lambda m, x: m(x, 0.5, jnp.ones(COND_DIM)), model, x)


def test_dropout(unet):
    model = _perturb(unet, 22)
    x, t = _inputs(model.data_shape)
    cond = jnp.ones(COND_DIM)

    # No key: deterministic (inference mode).
    out = _forward(model, x, t, cond)
    assert jnp.array_equal(out, _forward(model, x, t, cond))
    # A key: dropout applied, reproducible for the same key, different for another.
    out_1, _ = _train_forward_and_grad(model, x, t, cond, _key(30))
    out_1_again, _ = _train_forward_and_grad(model, x, t, cond, _key(30))
    out_2, _ = _train_forward_and_grad(model, x, t, cond, _key(31))
    assert jnp.array_equal(out_1, out_1_again)
    assert not jnp.allclose(out_1, out_2, atol=1e-4)
    assert not jnp.allclose(out_1, out, atol=1e-4)


def test_unet_structure(unet):
    model = unet
    # The repeated blocks are stacked for `lax.scan`, each with its own weights.
    assert model.down_blocks.conv1.weight.shape == (2, 8, 8, 3, 3)
    assert model.up_blocks.conv1.weight.shape == (3, 8, 16, 3, 3)
    assert not jnp.allclose(model.down_blocks.conv1.weight[0], model.down_blocks.conv1.weight[1])
    # Input: 3 channels plus sin and cos at 2 exponents for each.
    assert model.conv_in.weight.shape == (8, 3 * (1 + 2 * 2), 3, 3)


@pytest.mark.slow
def test_unet_unrolled_equals_scanned():
    # The two ways of running the repeated blocks compute the same function: outputs with
    # dropout on and gradients agree to float tolerance, from the same weights and keys.
    kwargs = dict(key=_key(3), channels=8, n_layers=2, dropout=0.5, cond_dim=COND_DIM)
    unrolled = _perturb(UNet((3, 8, 8), unroll=True, **kwargs), 23)
    scanned = _perturb(UNet((3, 8, 8), unroll=False, **kwargs), 23)
    x, t = _inputs((3, 8, 8))
    cond = jnp.ones(COND_DIM)
    out_u, grads_u = _train_forward_and_grad(unrolled, x, t, cond, _key(32))
    out_s, grads_s = _train_forward_and_grad(scanned, x, t, cond, _key(32))
    np.testing.assert_allclose(out_u, out_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads_u, grads_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        _forward(unrolled, x, t, cond), _forward(scanned, x, t, cond), rtol=1e-5, atol=1e-5
    )


def test_unet_vdm_cifar10_size():
    # VDM's CIFAR-10 score network, built abstractly (no memory, no compile).
    model = eqx.filter_eval_shape(
        lambda: UNet((3, 32, 32), key=_key(0), channels=128, n_layers=32, dropout=0.1)
    )
    params = [p for p in jax.tree.leaves(model) if isinstance(p, jax.ShapeDtypeStruct)]
    # Layer by layer, as in VDM's ScoreUNet (weights + biases; GroupNorm scale + offset).
    c, e, n = 128, 512, 32

    def resnet_block(c_in):
        shortcut = c_in * c + c if c_in != c else 0
        return 2 * c_in + (9 * c_in * c + c) + e * c + 2 * c + (9 * c * c + c) + shortcut

    time_mlp = (c * e + e) + (e * e + e)
    conv_in = 3 * 5 * 9 * c + c  # on x and its 4 Fourier features, per channel
    attention = 2 * c + 4 * (c * c + c)  # GroupNorm, then query, key, value and output
    conv_out = 2 * c + 9 * c * 3 + 3  # GroupNorm, then the convolution
    down_and_middle = (n + 2) * resnet_block(c)
    up = (n + 1) * resnet_block(2 * c)
    expected = time_mlp + conv_in + down_and_middle + attention + up + conv_out
    assert sum(math.prod(p.shape) for p in params) == expected  # about 30.6 million
    x = jax.ShapeDtypeStruct((3, 32, 32), jnp.float32)
    out = eqx.filter_eval_shape(lambda m, x: m(x, 0.5), model, x)
    assert out.shape == (3, 32, 32)


def test_unet_argument_checks():
    with pytest.raises(ValueError, match="data_shape"):
        UNet((64,), key=_key(0))
    with pytest.raises(ValueError, match="n_layers"):
        UNet((1, 8, 8), key=_key(0), channels=8, n_layers=0)
    with pytest.raises(ValueError, match="n_attention_heads"):
        UNet((1, 8, 8), key=_key(0), channels=8, n_attention_heads=3)


def test_sinusoidal_embedding():
    emb = np.asarray(sinusoidal_embedding(0.0, 6))
    np.testing.assert_array_equal(emb, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    # Frequencies from 1 down to 1/10000, in units of 1000 t; odd lengths are zero-padded.
    emb = np.asarray(sinusoidal_embedding(0.25, 7))
    freqs = 10_000.0 ** -np.array([0.0, 0.5, 1.0])
    expected = np.concatenate([np.sin(250.0 * freqs), np.cos(250.0 * freqs), [0.0]])
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)


def test_fourier_features():
    x = np.array([[0.5 / 64], [0.25 / 64]], dtype=np.float32)  # (c=2, 1)
    f = np.asarray(fourier_features(jnp.asarray(x), (6, 7)))
    assert f.shape == (2 * 2 * 2, 1)
    # sin(2^n 2 pi x) for (c0, n=6), (c0, n=7), (c1, n=6), (c1, n=7), then the cosines.
    args = 2 * np.pi * np.array([0.5, 1.0, 0.25, 0.5])
    expected = np.concatenate([np.sin(args), np.cos(args)])
    np.testing.assert_allclose(f[:, 0], expected, atol=1e-5)
    assert fourier_features(jnp.asarray(x), ()).shape == (0, 1)


def test_mlp_fourier_features_reach_the_network():
    shape = (1, 4, 4)
    model = MLPDenoiser(shape, key=_key(3), width=32, depth=1, fourier_exponents=(6, 7))
    # The lift sees the 16 pixels and their 2 x 2 x 16 sines and cosines.
    assert model.lift.weight.shape == (32, 16 * 5)
    model = _perturb(model, 22)
    # With the weights on the raw pixels zeroed, the network sees x only through the
    # features, whose periods are 1/64 and 1/128: a shift by 1/64 leaves the output
    # unchanged (to float32 rounding of sin at |arg| < 2 pi 128), one by 1/256 does not.
    model = eqx.tree_at(lambda m: m.lift.weight, model, model.lift.weight.at[:, :16].set(0.0))
    x, t = _inputs(shape)
    out = _forward(model, x, t, None)
    np.testing.assert_allclose(_forward(model, x + 1 / 64, t, None), out, atol=1e-4)
    assert not np.allclose(_forward(model, x + 1 / 256, t, None), out, atol=1e-3)
    # Without features the raw-pixel weights are all there is.
    plain = MLPDenoiser(shape, key=_key(3), width=32, depth=1)
    assert plain.lift.weight.shape == (32, 16)
    # Features of the leading channel only (the data, before MuLAN's log-SNR channel):
    # the other channel's shift by 1/64 now changes the output.
    two = MLPDenoiser(
        (2, 4, 4), key=_key(4), width=32, depth=1, fourier_exponents=(6, 7), fourier_channels=1
    )
    assert two.lift.weight.shape == (32, 32 + 4 * 16)
    two = _perturb(two, 23)
    two = eqx.tree_at(lambda m: m.lift.weight, two, two.lift.weight.at[:, :16].set(0.0))
    x2, t2 = _inputs((2, 4, 4))
    out2 = _forward(two, x2, t2, None)
    np.testing.assert_allclose(_forward(two, x2.at[:, 0].add(1 / 64), t2, None), out2, atol=1e-4)
    assert not np.allclose(_forward(two, x2.at[:, 1].add(1 / 64), t2, None), out2, atol=1e-3)
    unet = eqx.filter_eval_shape(
        lambda: UNet((2, 8, 8), key=_key(5), channels=8, n_layers=1, fourier_channels=1)
    )
    assert unet.conv_in.in_channels == 2 + 4  # 2 channels and the first one's 4 features


@pytest.mark.parametrize("num_levels", [17, 256])
def test_matched_fourier_exponents_see_every_bin_centre_in_one_phase(num_levels):
    low, high = matched_fourier_exponents(num_levels)
    assert high - low == 1.0
    if num_levels == 256:
        assert (low, high) == (6.0, 7.0)  # VDM's
    centres = -1.0 + (2 * np.arange(num_levels) + 1) / num_levels
    phase = np.asarray(fourier_features(jnp.asarray(centres[None]), (high,)))
    # One period per bin: the same sine and cosine at every centre (float32 rounding of
    # an argument up to 2 pi 128).
    np.testing.assert_allclose(phase, phase[:, :1] * np.ones_like(phase), atol=2e-4)
    with pytest.raises(ValueError, match="num_levels"):
        matched_fourier_exponents(1)
