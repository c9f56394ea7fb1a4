"""The tiers lab's app role: the Bank service over the chain-replicated data tier.

Who may call what: `Bank` and `KV` are what the lab's clients call (through
the switch or directly), open to all; only `Control` needs the lab credential.
The app server itself presents the credential to the data tier, which serves
lab machines only (nodes/data/__init__.py).
"""
