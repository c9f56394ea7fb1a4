"""The serverless lab's shared cores (sans-I/O): the controller that decides which instance
runs an invocation and when instances start, pause, resume and go (controller.py).
The runner role drives it over the Docker engine."""
