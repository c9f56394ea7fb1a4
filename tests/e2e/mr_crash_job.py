"""Word count whose workers misbehave like those of MIT 6.5840's crash test (shipped as a
user's job file by tests/e2e/test_mapreduce.py).

With params["crash"] set, the first map call of each task a worker process runs (and the
first reduce call of the process) rolls a die: a third of the time the worker process
ends at once (os._exit: no cleanup, no report; its container exits), a third of the time
it sleeps up to params["max_sleep"] seconds (10), else it carries on. The first roll of
the whole job, whichever worker makes it, is a crash, so every run has at least one: it
creates params["first_crash"] (a path on the lab's shared volume) as it goes. Without
params the job is plain word count: the sequential reference run.

Each input file should be one split (smaller than the split size), so "the first map call
for this file in this process" is the start of a task.
"""

import os
import random
import time

params = {}
_begun = set()  # the tasks this worker process has begun


def _misbehave(task):
    if not params.get("crash") or task in _begun:
        return
    _begun.add(task)
    if params.get("first_crash"):
        try:
            os.close(os.open(params["first_crash"], os.O_CREAT | os.O_EXCL))
            os._exit(1)
        except FileExistsError:
            pass
    roll = random.random()
    if roll < 1 / 3:
        os._exit(1)
    if roll < 2 / 3:
        time.sleep(random.uniform(0, float(params.get("max_sleep", 10))))


def map(key, value):
    _misbehave(("map", key))
    for word in value.split():
        yield word, 1


def reduce(key, values):
    _misbehave(("reduce",))
    return sum(values)
