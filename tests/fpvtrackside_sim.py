"""Transitional: the old name of pitlink_testkit.fpvtrackside, for a test file not yet moved.

tests/cluster/test_replicas.py still says `from fpvtrackside_sim import Simulator`; once it
imports from pitlink_testkit, this file goes. New tests import from pitlink_testkit.
"""

from pitlink_testkit.fpvtrackside import Simulator

__all__ = ["Simulator"]
