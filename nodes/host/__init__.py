"""The host role: the migration lab's hypervisor, one per `host-N` machine.

As libvirtd is to QEMU: it starts `python -m nodes.vm` processes on ports
of its own range, asks another host's hypervisor to prepare an incoming vm
process, tells the local vm to migrate there (the vm processes move the
bytes themselves, nodes.vm.transfer), and stops the source process once the
destination owns the vm. Every method needs the lab credential.
"""
