"""The built-in jobs: plain job modules, shipped to workers as source like a user's own.

Never imported by the framework itself: the master reads their source
(`nodes.mapreduce.jobs.builtin_source`) and the workers load it in isolation.
"""
