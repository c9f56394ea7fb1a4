"""`make bench`: run every benchmark; each writes reports/bench/<name>.json."""

from bench import chord, failover, foundation, mapreduce, migration_local, scenarios, tiers

foundation.main()
tiers.main()
scenarios.main()
chord.main()
failover.main()
migration_local.main([])
mapreduce.main([])
