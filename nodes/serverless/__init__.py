"""The serverless lab's shared cores, without network I/O: the controller that decides
which instance runs an invocation and when instances start, pause, resume and go
(controller.py); a function as an instance loads and runs it (function.py); and what
the runner may ask of the Docker engine through its proxy (enginepolicy.py).
The runner, instance and engine-proxy roles drive them."""
