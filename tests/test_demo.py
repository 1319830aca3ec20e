import math

import pytest

from adaptive_diffusion import demo


@pytest.mark.slow
def test_short_demo_run_beats_the_uniform_model(tmp_path, capsys):
    # 17 grey levels: a uniform model has log2(17) = 4.09 bits/dim. 2000 steps of the demo
    # job bring the held-out bound well below it: the upper end of the 95% interval of
    # the ELBO over the 297 test digits is more than 0.5 bits under it.
    results = demo.main(
        [
            *("--workdir", str(tmp_path / "demo"), "--no-progress"),
            *("--set", "steps=2000", "--set", "eval.num_samples=16"),
            *("--set", "eval.sample_steps=100", "--set", "eval_every=2000"),
        ]
    )
    out = capsys.readouterr().out
    assert "held-out ELBO" in out and "held-out ODE" in out
    assert (tmp_path / "demo" / "samples.png").is_file()
    assert (tmp_path / "demo" / "schedule.png").is_file()
    assert results["elbo_bpd"] < math.log2(17) - 0.5 - 0.2, results
    assert math.isfinite(results["ode_bpd"])
