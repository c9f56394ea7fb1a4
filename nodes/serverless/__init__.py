"""The serverless lab's shared cores, without network I/O: the controller that decides
which instance runs an invocation and when instances start, pause, resume and go
(controller.py), and a function as an instance loads and runs it (function.py).
The runner and instance roles drive them."""
