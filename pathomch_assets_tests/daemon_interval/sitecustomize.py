"""On ``PYTHONPATH`` of the `dagster dev` the tests start (``browser.dagster_dev``): its backfill daemon looks at
backfills every ``$PATHOMCH_TEST_DAEMON_INTERVAL_S`` seconds instead of Dagster's 30.

Dagster's backfill daemon sleeps ``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`` (30 s, not a
setting) between two looks at a backfill, and a backfill moves one layer of the asset graph per look: a backfill of
the six assets a retrained model feeds waited minutes on that sleep alone.  This sets the constant when the module
is loaded (it is also the asset daemon's interval where no automation sensor runs: not so here).  Nothing happens
where the variable is unset, and the ``sitecustomize`` this one hides on ``sys.path`` (a distribution's) still runs.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

MODULE = "dagster._daemon.controller"
HERE = os.path.dirname(os.path.abspath(__file__))


class _SetInterval(importlib.abc.MetaPathFinder):
    def __init__(self, seconds: int):
        self.seconds = seconds
        self.looking = False

    def find_spec(self, name, path=None, target=None):
        if name != MODULE or self.looking:
            return None
        self.looking = True  # the lookup below must find the real module, not come back here
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        finally:
            self.looking = False
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

# the next sitecustomize on the path (Python imports only the first one found)
_next = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != HERE]
)
if _next is not None and _next.loader is not None:
    _module = importlib.util.module_from_spec(_next)
    _next.loader.exec_module(_module)
