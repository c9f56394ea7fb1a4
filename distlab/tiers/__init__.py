"""The tiers lab on the host: the bank and register workloads, the bank checker, the
chain's machine references and `distlab tiers bank`, registered in `distlab.tiers.lab`."""
