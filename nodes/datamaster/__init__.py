"""The data-master role: keeps the data tier's chain configuration and changes it.

core.py decides (sans-I/O); service.py persists the configuration, health-
checks members, lets replicas register and pushes every change.

When the data-master fails: the chain keeps serving with the configuration
it has. Replicas keep forwarding and answering, and clients with a cached
configuration keep working; what stops is every change: a failed member is
not taken out (writes that need it fail until the master is back), no
replica joins, and a replica that restarts waits, not serving, until the
master answers its Register. The configuration survives the master's own
restart (it is on disk, fsync'd, before anyone hears of it): the restarted
master presumes the listed members up, checks them again, and pushes its
configuration to every member, so nothing is lost and no person has to act.

Who may call what: the whole `Master` service needs the lab credential
(`PROTECTED` in __main__.py). Register is called by replicas only; GetConfig
by replicas, by the app servers' data clients and by the host, all lab
machines holding the credential (the configuration names every replica's
address, which only the data tier's own clients need).
"""
