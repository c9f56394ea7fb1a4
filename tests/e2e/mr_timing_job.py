"""A job whose tasks each take about params["seconds"] (they sleep), so tasks handed to
different workers at about the same time overlap: MIT 6.5840's map and reduce parallelism
tests (shipped as a user's job file by tests/e2e/test_mapreduce.py).

Each input file holds one line of keys "p0 p1 ... p<R-1>", and key "p<r>" goes to reduce
task r: every map task sleeps once (one line) and every reduce task once (one key).
The output counts each key: the number of input files.
"""

import time

params = {}


def map(key, value):
    time.sleep(float(params.get("seconds", 0)))
    for word in value.split():
        yield word, 1


def partition(key, reducers):
    return int(key[1:]) % reducers


def reduce(key, values):
    time.sleep(float(params.get("seconds", 0)))
    return sum(values)
