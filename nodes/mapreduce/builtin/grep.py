"""Distributed grep: every line matching params["pattern"] (a regular expression), with
the files it occurs in."""

import re

params = {}


def map(key, value):
    if re.search(params.get("pattern", ""), value):
        yield value, key


def reduce(key, values):
    return ",".join(sorted(set(values)))
