"""Entry point of the frozen pits agent, built by scripts/build-agent with PyInstaller.

PyInstaller runs one script as `__main__`; this one only calls the same `main` as the
`pits-agent` console script. It lives in scripts/ rather than in pits_appliance/ because
PyInstaller puts the entry script's folder on the import path: from pits_appliance/ its
modules would also be importable as top-level names (`watchdog`, `config`, `status`) and could
shadow real packages of those names.
"""

from pits_appliance.cli import main

if __name__ == "__main__":
    main()
