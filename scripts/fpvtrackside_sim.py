"""Run the FPVTrackside simulator: `python scripts/fpvtrackside_sim.py --help`.

The simulator is pitlink_testkit.fpvtrackside, where the tests and benches import it from; its
command line is pitlink_testkit.fpvtrackside_cli.
"""

from pitlink_testkit.fpvtrackside_cli import main

if __name__ == "__main__":
    main()
