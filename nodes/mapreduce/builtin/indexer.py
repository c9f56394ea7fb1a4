"""Inverted index: for each word, how many documents hold it and which (MIT 6.5840's indexer)."""

import re

WORD = re.compile(r"[A-Za-z]+")


def map(key, value):
    # key is the input file's name: the document.
    for word in set(WORD.findall(value)):
        yield word, key


def reduce(key, values):
    documents = sorted(set(values))
    return f"{len(documents)} {','.join(documents)}"
