"""Distributed sort: lines ordered by their first field. Keys are range-partitioned by
their first byte, so mr-out-0, mr-out-1 ... read in order are one sorted output."""

params = {}


def map(key, value):
    field, _, rest = value.partition(" ")
    if field:
        yield field, rest


def partition(key, reducers):
    first = key.encode()[0] if key else 0
    return first * reducers // 256


def reduce(key, values):
    return " | ".join(sorted(values))
