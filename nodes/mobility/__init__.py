"""Code mobility (the migration lab): programs in a small stack-machine language shipped to
a host and started there fresh (weak mobility), or moved mid-run with their execution
state (strong mobility). `language` is the interpreter (sans-I/O), `service` the gRPC
Mobility service each host serves beside its Hypervisor, `programs/` examples."""
