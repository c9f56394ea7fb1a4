"""`make bench`: run every benchmark; each writes reports/bench/<name>.json."""

from bench import chord, foundation, tiers

foundation.main()
tiers.main()
chord.main()
