"""What runs inside a distlab machine: one subpackage per role, plus `nodes.common`.

`nodes` never imports `distlab` (the host side)."""
