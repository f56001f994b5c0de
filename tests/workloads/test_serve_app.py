"""workloads/serve_app.py without a cluster: import paths, the builder's args, the config file.

The app itself is run on the local cluster in test_serve_on_local_cluster.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from workloads import serve_app

from .conftest import WORKLOADS


def test_serve_app_app_imports_with_workloads_as_the_working_dir():
    # What a RayService (import_path serve_app:app, working_dir = workloads/) does;
    # the `workloads` package is hidden so the module must stand on its own.
    code = ("import sys; sys.modules['workloads'] = None\n"
            "from ray.serve._private.utils import import_attr\n"
            "app = import_attr('serve_app:app')\n"
            "import serve_app\n"
            "print(type(app).__name__, serve_app.anomaly_model.__name__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=WORKLOADS, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Application", "anomaly_model"]


def test_config_file_is_a_valid_serve_deploy_config_whose_import_path_builds():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    with open(os.path.join(WORKLOADS, "serve_config.yaml")) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    (app_cfg,) = config.applications
    app = call_user_app_builder_with_args_if_necessary(import_attr(app_cfg.import_path),
                                                       app_cfg.args)
    deployment = app._bound_deployment
    assert deployment.num_replicas == app_cfg.args["replicas"] == 2
    assert deployment.init_kwargs["max_batch_rows"] == 8192 == serve_app.DEFAULT_MAX_BATCH_ROWS
    assert config.http_options.host == "127.0.0.1"  # nothing listens beyond the head itself


def test_builder_defaults_and_args():
    d = serve_app.build_app()._bound_deployment
    assert d.num_replicas == serve_app.DEFAULT_REPLICAS
    assert d.ray_actor_options["num_cpus"] == 1
    d = serve_app.build_app({"replicas": "3", "max_wait_ms": "5", "seed": 4})._bound_deployment
    assert (d.num_replicas, d.init_kwargs["max_wait_ms"], d.init_kwargs["seed"]) == (3, 5.0, 4)


def test_throughput_optimized_sets_rays_documented_flags_on_the_replicas_too(tmp_path):
    env = serve_app.throughput_env(str(tmp_path), 45678)
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # this run's own HAProxy files and metrics port, not Serve's machine-wide defaults
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(tmp_path / "admin.sock")
    assert env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] == str(tmp_path)
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "45678"
    from ray.serve.config import ControllerOptions

    ControllerOptions.model_validate({"runtime_env": {"env_vars": env}})  # what serve.start takes
    d = serve_app._application({"replicas": 2}, env)._bound_deployment
    assert d.ray_actor_options == {"num_cpus": 1, "runtime_env": {"env_vars": env}}
    assert "runtime_env" not in serve_app.build_app()._bound_deployment.ray_actor_options
    args = serve_app.build_parser().parse_args(["--throughput-optimized"])
    assert args.throughput_optimized


@pytest.mark.parametrize(("args", "message"), [
    ({"replica": 2}, "unknown args replica; allowed: features, max_batch_rows"),
    ({"replicas": 0}, "replicas must be >= 1, got 0"),
    ({"replicas": "two"}, "replicas must be an integer, got 'two'"),
    ({"max_wait_ms": "soon"}, "max_wait_ms must be a number of ms, got 'soon'"),
    ({"max_wait_ms": 5000}, "max_wait_ms must be 0..1000, got 5000"),
    ({"max_batch_rows": 0}, "max_batch_rows must be >= 1, got 0"),
])
def test_bad_builder_args_name_the_arg_and_the_allowed_values(args, message):
    with pytest.raises(ValueError, match="serve_app: " + message.replace("..", r"\.\.")):
        serve_app.build_app(args)
