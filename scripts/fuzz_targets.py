"""Run the fuzz targets (wire/ and the parsers of files and local answers); scripts/fuzz runs
this inside .venv, with atheris if it can.

The targets are pitlink_testkit.fuzz_targets and fuzz_parsers, where the tests import them from.
"""

import sys

from pitlink_testkit.fuzz_targets import main

if __name__ == "__main__":
    sys.exit(main())
