"""Print the node image's pinned requirements from pyproject.toml (one source of pins).

The node runtime dependencies plus grpcio-tools, which generates the stubs during the build.
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as source:
    project = tomllib.load(source)["project"]
tools = [pin for pin in project["optional-dependencies"]["dev"] if pin.startswith("grpcio-tools")]
print(" ".join(project["dependencies"] + tools))
