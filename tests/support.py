"""Transitional: the old name of pitlink_testkit's helpers, for test files not yet moved.

tests/integration/test_observability.py, test_coalescing.py, test_paths_and_methods.py and
tests/cluster/test_replicas.py still say `from support import ...`; once they import from
pitlink_testkit, this file goes. New tests import from pitlink_testkit.
"""

from pitlink_testkit.clock import FakeClock
from pitlink_testkit.keys import make_keys
from pitlink_testkit.loopback import free_port, serving
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

__all__ = ["FakeClock", "System", "free_port", "make_keys", "serving", "wait_for"]
