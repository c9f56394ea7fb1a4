"""Word count: how often each word (a run of letters, as in MIT 6.5840's wc) occurs."""

import re

WORD = re.compile(r"[A-Za-z]+")


def map(key, value):
    for word in WORD.findall(value):
        yield word, 1


def combine(key, values):
    return sum(values)


def reduce(key, values):
    return sum(int(value) for value in values)
