"""`--executor ray` on a local Ray instance (loopback, 2 CPUs): measured / local / fisher sharded
over actors give the single-process Profile; a worker killed mid-run has its cells re-queued."""

import functools

import numpy as np
import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from test_block_replay import tiny_llama_task  # noqa: E402

slow = pytest.mark.slow  # starting Ray and its actors takes 30-80 s per test here


@pytest.fixture(scope="module")
def local_ray():
    import os

    here = os.path.dirname(__file__)
    path = os.pathsep.join([os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


FACTORY = functools.partial(tiny_llama_task, 0)


def _est(name, **kw):
    from bitalloc.sensitivity import get_estimator

    return get_estimator(name, bits=(2, 4, 8), group_size=16, **kw)


@slow
@pytest.mark.parametrize("name,opts", [("measured", {"score": "kl"}), ("local", {}), ("fisher", {})])
def test_ray_equals_single_process(local_ray, name, opts):
    from bitalloc.sensitivity.ray_executor import RayExecutor

    task = FACTORY()
    single = _est(name, **opts).estimate(task)
    seen = []
    p = RayExecutor(workers=2).run(_est(name, **opts), task, FACTORY, progress=lambda d, t: seen.append((d, t)))
    assert p.names == single.names and p.meta["executor"] == "ray"
    np.testing.assert_allclose(p.sensitivity, single.sensitivity, rtol=1e-5, atol=1e-12)
    if name == "measured":
        np.testing.assert_allclose(np.array(p.extra["loss_increase"]), np.array(single.extra["loss_increase"]),
                                   rtol=1e-5, atol=1e-9)
    assert seen[-1][0] == seen[-1][1] and seen[-1][1] == (21 * 3 if name != "fisher" else len(task.calib))


@slow
@pytest.mark.parametrize("name", ["measured", "fisher"])
def test_a_killed_worker_has_its_cells_requeued(local_ray, name):
    from bitalloc.sensitivity.ray_executor import RayExecutor

    task = FACTORY()
    single = _est(name).estimate(task)
    ex = RayExecutor(workers=2)
    killed = []

    def progress(done, total):
        if not killed:
            killed.append(ex.actors[0])
            ray.kill(ex.actors[0])

    p = ex.run(_est(name), task, FACTORY, progress=progress)
    assert killed and p.meta["workers_lost"] == 1
    np.testing.assert_allclose(p.sensitivity, single.sensitivity, rtol=1e-5, atol=1e-12)


def test_cli_refuses_ray_for_other_estimators_before_loading(tmp_path, capsys):
    from bitalloc.cli.app import main

    assert main(["profile", "--model", "smollm2", "--estimator", "hessian", "--executor", "ray",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "--executor ray estimator" in capsys.readouterr().err
    assert main(["profile", "--model", "smollm2", "--estimator", "fisher", "--workers", "3",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "need --executor ray" in capsys.readouterr().err


def test_executor_options_are_checked():
    from bitalloc import BitallocError
    from bitalloc.sensitivity.ray_executor import RayExecutor

    for kw in ({"workers": 0}, {"cpus_per_worker": True}, {"restarts": -1}):
        with pytest.raises(BitallocError, match=next(iter(kw))):
            RayExecutor(**kw)
