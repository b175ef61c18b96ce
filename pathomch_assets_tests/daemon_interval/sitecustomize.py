"""On ``PYTHONPATH`` of the `dagster dev` the tests start (``browser.dagster_dev``): its daemon loops every
``$PATHOMCH_TEST_DAEMON_INTERVAL_S`` seconds instead of Dagster's 30.

Dagster's backfill daemon sleeps ``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`` (30 s, not a
setting) between two looks at a backfill, and a backfill moves one layer of the asset graph per look: a backfill of
the six assets a retrained model feeds waited minutes on that sleep alone.  This changes the constant as the module
is first imported; nothing else of Dagster, and nothing at all where the variable is unset.
"""

import importlib.abc
import importlib.util
import os
import sys

MODULE = "dagster._daemon.controller"


class _SetInterval(importlib.abc.MetaPathFinder):
    def __init__(self, seconds: int):
        self.seconds = seconds

    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)  # once; and the lookup below finds the real module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.DEFAULT_DAEMON_INTERVAL_SECONDS = self.seconds

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("PATHOMCH_TEST_DAEMON_INTERVAL_S"):
    sys.meta_path.insert(0, _SetInterval(int(os.environ["PATHOMCH_TEST_DAEMON_INTERVAL_S"])))
