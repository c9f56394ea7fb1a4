"""The vm role: a machine whose state is a memory image, and live migration of it.

A `vm` process owns an image of VM_IMAGE_MIB MiB in 4 KiB pages (`memory`),
runs a deterministic guest workload that dirties pages (`guest`), serves
clients reads and writes of pages and a small KV kept in them (`service`),
and sends itself to another `vm` process started with VM_INCOMING, as QEMU
does with `-incoming`: the migration algorithms are the sans-I/O state
machines in `strategies`, driven over gRPC streams by `transfer`.

Who may call what: the `VM` service is the data plane, open to clients; the
`Migration` service (migrate, transfer, status) needs the lab credential.
"""
