"""The tiers lab's switch: a gRPC L7 load balancer, the cluster's only entry point.

`python -m nodes.switch` (see __main__.py). Sans-I/O cores: hashring.py,
policies.py, backends.py (set diffing, health, ejection), retry_budget.py;
the gRPC adapter: forwarder.py (per-request path) and node.py (discovery and
health-check threads, status, Reconfigure).
"""
