"""A MapReduce job module that raises in map on one record (tests/e2e/test_mapreduce.py)."""


def map(key, value):
    if "quorum" in value:
        raise ValueError("this job cannot read a line with 'quorum' in it")
    for word in value.split():
        yield word, 1


def reduce(key, values):
    return sum(values)
