"""The hot path holds no host callback: the vmapped, differentiated bound and the train step.

Data are checked where they enter (the sources when they load, `batch_nelbo` once per
batch, the per-example functions on the host when called eagerly), never per example
inside the compiled bound. Checked on the jaxprs, sub-jaxprs included.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import adaptive_diffusion as ad
from adaptive_diffusion import train


def _primitives(jaxpr) -> set[str]:
    """Every primitive of a (closed) jaxpr and of the jaxprs inside its equations."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    names |= _primitives(sub)
    return names


def _callbacks(fn, *args) -> set[str]:
    jaxpr, _, _ = eqx.filter_make_jaxpr(fn)(*args)
    return {name for name in _primitives(jaxpr) if "callback" in name}


def test_the_differentiated_bound_has_no_callback():
    shape = (1, 4, 4)
    xs = ad.from_levels(jax.random.randint(jax.random.key(0), (4, *shape), 0, 17), 17)
    mulan = ad.MuLAN(
        shape,
        key=jax.random.key(1),
        latent=ad.GaussianLatent(size=3),
        encoder=ad.nn.MLPEncoder(shape, 6, key=jax.random.key(2), width=8, depth=1),
    )
    for process in (ad.VP(ad.LearnedSchedule(key=jax.random.key(3))), mulan):
        input_shape, cond_dim = process.network_shape(shape)
        net = ad.nn.MLPDenoiser(input_shape, key=jax.random.key(4), width=16, cond_dim=cond_dim)

        def loss(net, process=process):
            def one(x, k, uniform):
                model = process.denoiser(net)
                return ad.nelbo(process, model, x, key=k, num_levels=17, uniform=uniform)

            return jnp.mean(ad.batch_bound(one, xs, key=jax.random.key(5)).total)

        assert _callbacks(eqx.filter_grad(loss), net) == set(), type(process).__name__
    # The check at the batch's boundary is one (in the batched entry point, not per example).
    model = ad.nn.MLPDenoiser(shape, key=jax.random.key(4), width=16)
    vp = ad.VP(ad.LinearSchedule())
    boundary = _callbacks(lambda xs: ad.batch_nelbo(vp, model, xs, key=jax.random.key(0)), xs)
    assert boundary != set()


def test_the_train_step_has_no_callback():
    for process in ({"kind": "vp"}, {"kind": "mulan", "encoder": "mlp"}):
        config = train.Config.from_dict(
            {
                "process": process,
                "network": {"kind": "mlp", "width": 16, "depth": 1},
                "batch_size": 8,
            }
        )
        model = train.build_model(config, (1, 8, 8), 17, key=jax.random.key(0))
        optimizer = train.make_optimizer(config.optimizer, config.steps)
        mesh = train.make_mesh()
        state = train.init_state(model, optimizer, jax.random.key(1))
        step = train.make_train_step(train.training_loss, optimizer, mesh)
        batch = ad.from_levels(jax.random.randint(jax.random.key(2), (8, 1, 8, 8), 0, 17), 17)
        assert _callbacks(step, state, batch) == set(), process
