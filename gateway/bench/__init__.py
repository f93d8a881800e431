"""The benchmark behind `scripts/bench`: what the gateway adds to each request, on loopback.

`python -m gateway.bench --help` lists the options; docs/PERFORMANCE.md explains the method.
"""
