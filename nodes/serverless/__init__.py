"""The serverless lab's shared cores: the controller that decides which instance runs an
invocation and when instances start, pause, resume and go (controller.py); a function as
an instance loads and runs it (function.py); what the runner may ask of the Docker engine
through its proxy (enginepolicy.py); and the durable queue of asynchronous invocations
(asyncqueue.py, the one that writes a file). The runner, instance and engine-proxy roles
drive them."""
