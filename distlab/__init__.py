"""distlab: the host side of the lab (CLI, Testbed, runtimes, faults, workloads, checkers)."""
