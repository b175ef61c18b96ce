"""Dagster resources: the deployment configuration and the result store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from .config import DEMO_CONFIG, ENV_VAR, PathomchConfig, load_config
from .errors import ConfigError
from .tables import TableStore


def config_digest(cfg: PathomchConfig) -> str:
    """A short digest of a loaded configuration (every setting, paths resolved)."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigChanged(ConfigError):
    """The configuration file no longer says what the definitions were built from."""


class PathomchResource(dg.ConfigurableResource):
    """The YAML configuration (``config_path``, else ``$PATHOMCH_CONFIG``, else the demo)
    and the result tables it names.

    The configuration is read and validated once per resource and file version: ``get_config`` reads the
    file again only when its path, size or modification time changed.

    One configuration per run: the definitions pin their resource to the configuration they were built from
    (``config_digest``; ``definitions.build_definitions``).  When the file has changed since (edited under a
    running ``dagster dev``), ``get_config`` refuses with :class:`ConfigChanged` instead of handing the run
    settings that differ from its asset graph (partitions, code versions); reloading the code location builds
    both again from the new file.  A resource made without a digest (tests, scripts) follows the file.
    """

    config_path: str | None = None
    config_digest: str | None = None
    _config: tuple | None = PrivateAttr(default=None)

    @classmethod
    def pinned(cls, cfg: PathomchConfig, config_path: str | None) -> PathomchResource:
        """The resource of definitions built from ``cfg`` (read from ``config_path``)."""
        return cls(config_path=config_path, config_digest=config_digest(cfg))

    def get_config(self) -> PathomchConfig:
        path = Path(self.config_path or os.environ.get(ENV_VAR) or DEMO_CONFIG).resolve()
        try:
            st = path.stat()
            version = (str(path), st.st_size, st.st_mtime_ns)
        except OSError:
            return load_config(path)  # says which file is missing
        if self._config is None or self._config[0] != version:
            cfg = load_config(path)
            if self.config_digest is not None and config_digest(cfg) != self.config_digest:
                raise ConfigChanged(
                    f"{path} changed since the Dagster definitions were built from it: this code location's asset "
                    "graph (partitions, code versions) is the earlier file's. Reload the code location (UI: "
                    "Deployment > Reload; or restart `dagster dev` / the command) so that the graph and the runs "
                    "use the same configuration."
                )
            self._config = (version, cfg)
        return self._config[1]

    def get_store(self) -> TableStore:
        cfg = self.get_config()
        return TableStore(cfg.tables_dir, cfg.duckdb_path)


class AcceleratorResource(dg.ConfigurableResource):
    """TensorFlow on whatever accelerators are visible.

    Enables memory growth on every GPU, spreads training over all of them with a
    ``MirroredStrategy`` (one GPU or none: the default strategy), and says which in the run
    log.  ``use_gpu=False`` hides GPUs (tests, CPU-only runs).
    """

    use_gpu: bool = True
    mixed_precision: bool = False
    _gpus: list = PrivateAttr(default_factory=list)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus and not self.use_gpu:
            tf.config.set_visible_devices([], "GPU")
            gpus = []
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised in this process
                pass
        if self.mixed_precision and gpus:
            import keras

            keras.mixed_precision.set_global_policy("mixed_float16")
        self._gpus = [g.name for g in gpus]
        if context.log:
            if gpus:
                context.log.info(
                    f"TensorFlow {tf.__version__}: training on {len(gpus)} GPU(s) {self._gpus}"
                    f"{', mixed precision' if self.mixed_precision else ''}"
                )
            else:
                context.log.info(
                    f"TensorFlow {tf.__version__}: no GPU visible, training on the CPU "
                    f"({len(tf.config.list_physical_devices('CPU'))} device, {os.cpu_count()} cores)"
                )

    def strategy(self):
        import tensorflow as tf

        if len(self._gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()

    def describe(self) -> str:
        gpus = self._gpus
        return f"{len(gpus)} GPU(s)" if gpus else "CPU"
