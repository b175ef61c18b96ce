"""What each step asks of a cluster, and which Dagster executor runs the steps.

The same definitions run everywhere; only the environment differs (docs/scale-out.md):

- ``PATHOMCH_EXECUTOR`` unset: Dagster's default (a process per step) for runs launched from the UI.
- ``PATHOMCH_EXECUTOR=in_process``: every step in the run's process.
- ``PATHOMCH_EXECUTOR=k8s``: ``dagster_k8s.k8s_job_executor``, a pod per step, configured from the
  YAML file at ``PATHOMCH_K8S_EXECUTOR_CONFIG`` (``deploy/k8s_executor.yaml`` in the image).

The ``dagster-k8s/config`` op tags below size those pods; other executors ignore them.
"""

from __future__ import annotations

import os

import dagster as dg
import yaml

EXECUTOR_ENV = "PATHOMCH_EXECUTOR"
K8S_EXECUTOR_CONFIG_ENV = "PATHOMCH_K8S_EXECUTOR_CONFIG"
K8S_TAG = "dagster-k8s/config"

#: trait_model: one GPU per training step, on a GPU node (measured peaks: docs/scale-out.md)
GPU_STEP = {
    K8S_TAG: {
        "container_config": {
            "resources": {"requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"nvidia.com/gpu": 1, "memory": "32Gi"}}
        },
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    }
}

#: slide_tiles: a worker pool of ``tiling.workers`` processes (< 1 GB RSS each, bench/results.json)
TILING_STEP = {
    K8S_TAG: {
        "container_config": {"resources": {"requests": {"cpu": "8", "memory": "12Gi"}, "limits": {"memory": "16Gi"}}},
    }
}


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by ``PATHOMCH_EXECUTOR`` (None: Dagster's default)."""
    name = os.environ.get(EXECUTOR_ENV, "").strip()
    if name in ("", "multiprocess"):
        return None
    if name == "in_process":
        return dg.in_process_executor
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as err:
            raise RuntimeError(f"{EXECUTOR_ENV}=k8s needs dagster-k8s: pip install 'pathomch[deploy]'") from err
        path = os.environ.get(K8S_EXECUTOR_CONFIG_ENV)
        if not path:
            return k8s_job_executor
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
        validate_executor_config(k8s_job_executor, config, path)
        return k8s_job_executor.configured(config, name="pathomch_k8s")
    raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected in_process, multiprocess or k8s")


def validate_executor_config(executor: dg.ExecutorDefinition, config: dict, source: str) -> None:
    """Check ``config`` against the executor's schema now, not when the first run starts."""

    @dg.op
    def probe_op():
        pass

    @dg.job(executor_def=executor)
    def probe():
        probe_op()

    try:
        dg.validate_run_config(probe, {"execution": {"config": config}})
    except dg.DagsterInvalidConfigError as err:
        raise ValueError(f"{source}: invalid {executor.name} executor configuration: {err}") from None
