"""Run the FPVTrackside simulator: `python scripts/fpvtrackside_sim.py --help`.

The simulator is pitlink_testkit.fpvtrackside, where the tests and benches import it from.
"""

from pitlink_testkit.fpvtrackside import main

if __name__ == "__main__":
    main()
