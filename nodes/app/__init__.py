"""The tiers lab's app role: the Bank service over the chain-replicated data tier."""
