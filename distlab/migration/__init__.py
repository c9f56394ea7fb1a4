"""The migration lab on the host: where vms run, moving them live, the `migrate` action and
the `migration` check (registered in `distlab.migration.lab`)."""
