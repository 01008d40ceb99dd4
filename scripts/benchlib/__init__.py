"""The benchmark suite's parts (see scripts/bench): processes, clients, comparisons, report.

`stack` starts and stops what is measured (simulator, relays, agents, redis-server, nginx, a
bare Tornado app) and runs wrk; `httpc` is a small keep-alive HTTP client for many spectators
in one process; `pits_swarm` holds thousands of idle pits connections; `compare_http` and
`compare_pits` are the comparisons; `report` prints the table and writes JSON and PNG.
"""
