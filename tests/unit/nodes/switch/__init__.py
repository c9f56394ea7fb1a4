"""Unit tests of nodes/switch: a package, so its module names never clash with other roles'."""
