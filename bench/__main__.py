"""`make bench`: run every benchmark; each writes reports/bench/<name>.json.

The soak (`python -m bench.soak`, 30 minutes by default) is not among them: `make soak`.
"""

from bench import (
    bittorrent,
    chord,
    cluster,
    failover,
    foundation,
    mapreduce,
    migration,
    migration_local,
    overload,
    scenarios,
    serverless,
    tiers,
)

foundation.main()
tiers.main()
scenarios.main()
chord.main()
failover.main([])
migration_local.main([])
migration.main([])
overload.main([])
mapreduce.main([])
bittorrent.main([])
serverless.main([])
cluster.main([])
