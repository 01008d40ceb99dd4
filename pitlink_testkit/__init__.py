"""What the tests, the benches and the demo share: one importable package, no path tricks.

- `waiting`: `wait_for` (in an event loop) and `poll` (outside one): a condition, a deadline.
- `loopback`: `free_port`, and `serving` a handler a test plays itself.
- `clock`: `FakeClock`, time that moves only when a test moves it.
- `redis_server`: `RedisServer`, a real redis-server on a loopback port.
- `faultproxy`: `FaultProxy`, a real TCP proxy that delays, cuts, resets or black-holes links.
- `logcheck`: every log record of a test run, and what must not be in it.
- `keys`: `make_keys`, a fresh key set whose secrets the log check looks for.
- `system`: `System`, the simulator, a relay and an agent on loopback.
- `control`: the relay's control WebSocket with the test playing the pits.
- `fpvtrackside`: the FPVTrackside simulator, its web server and its ExtensionMode events, in
  `fpvtrackside_*` parts (`python scripts/fpvtrackside_sim.py` runs it).
- `fuzz_targets`: the fuzz targets over wire/ (`scripts/fuzz` runs them).
- `flags_doc`: the flag tables in docs/ (`scripts/flags_doc.py` writes and checks them).

The editable install (`./scripts/test`, `./scripts/demo`) makes it importable. Nothing in
cloud/, pits_appliance/ or wire/ imports it.
"""
