"""Reproduces the hang once seen in tests/test_nonisotropic.py: an XLA:CPU deadlock, not a
host callback.

jaxlib 0.10.2's LAPACK kernel for batched triangular solves (`lapack_strsm_ffi`) splits a
large batch into chunks, queues them on the XLA:CPU worker pool it runs on, and blocks
until they finish (`jax::ParallelBatchMap`). When as many such solves run concurrently as
the pool has threads (2 on a 2-core machine), every worker blocks and no one runs the
chunks. Stack of a hung run (gdb, both `tf_XLAEigen` workers):
`BlockingCounter::Wait <- ParallelBatchMap <- TriMatrixEquationSolver::Kernel <-
lapack_strsm_ffi <- CustomCallThunk::Execute <- ThunkExecutor::Execute`.

Measured on 2 cores, jax 0.10.2: with `NSOLVE=2` (two independent solves in one program)
3 of 5 runs of 200 executions hung; with `NSOLVE=1`, or a batch of 64, 0 of 3. No equinox
and no callback is involved. Workaround in the tests: one program per process when the
exact mixture scores (their `solve_triangular`) are evaluated over large batches.

    NSOLVE=2 python scripts/xla_cpu_lapack_deadlock.py   # hangs often; dumps stacks after 60 s
"""

import faulthandler
import os
import time

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular


faulthandler.dump_traceback_later(int(os.environ.get("FH", "60")), exit=True)
BATCH = int(os.environ.get("B", str(16 * 1024 * 16)))
RUNS = int(os.environ.get("N", "200"))
NSOLVE = int(os.environ.get("NSOLVE", "2"))


@jax.jit
def solves(x):
    out = []
    for i in range(NSOLVE):
        y = jnp.sin(x * (i + 1.0))  # independent work first, so the solves run concurrently
        a = jnp.stack([jnp.stack([1 + y**2, 0 * y], -1), jnp.stack([y, 1 + y**2], -1)], -2)
        rhs = jnp.stack([y, 2 * y], -1)[..., None]
        out.append(jnp.sum(solve_triangular(a, rhs, lower=True)))
    return out


x = jnp.linspace(0, 1, BATCH)
print(jax.__version__, jax.devices(), "batch", BATCH, "solves", NSOLVE, flush=True)
start = time.time()
for i in range(RUNS):
    jax.block_until_ready(solves(x))
print("done", RUNS, "runs in", round(time.time() - start, 2), "s", flush=True)
