"""`make bench`: run every benchmark; each writes reports/bench/<name>.json."""

from bench import foundation

foundation.main()
