"""python -m nodes.app — the tiers lab's app server: the Bank service (see --help)."""

import sys

from nodes.app.processes import main
from nodes.app.service import SPEC

if __name__ == "__main__":
    sys.exit(main(SPEC))
