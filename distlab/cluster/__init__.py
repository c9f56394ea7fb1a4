"""Several hosts as one place to run labs: a Docker Swarm set up over SSH with Fabric.

`distlab cluster create HOST...` prepares each host (scripts/setup-host.sh, pushed to
it), makes the swarm (init on the first host, join on the others), labels its nodes
and starts an image registry on the manager; `status` and `destroy` read and undo that.
`test-hosts` makes hosts to try all of it on one machine (containers running sshd and
their own Docker engine), reached over real SSH like any other host. docs/cluster.md.
"""
