"""The MapReduce lab's roles: a master (`python -m nodes.mapreduce.master`) that schedules
the tasks of submitted jobs over workers (`python -m nodes.mapreduce.worker`) that ask.

`scheduler` is the master's sans-I/O job state machine; `jobs` is what a job is
(module, splits, partitions, outputs) and how a task runs; `master` and
`worker` are the nodes, thin gRPC adapters around them; `builtin/` holds the
built-in jobs. docs/mapreduce.md tells the whole story.
"""
