"""Write the flag tables in docs/ from the settings' declarations; --check only compares.

The generator is pitlink_testkit.flags_doc, where the tests import it from.
"""

import sys

from pitlink_testkit.flags_doc import main

if __name__ == "__main__":
    sys.exit(main())
