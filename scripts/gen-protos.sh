#!/usr/bin/env bash
# Generate Python stubs from protos/*.proto into nodes/rpc/ (never committed).
# Used by `make protos` on the host and by images/node/Dockerfile in the build.
# protoc writes sibling imports as `import x_pb2`; we rewrite them to relative
# imports so the stubs live inside the `nodes.rpc` package.
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/nodes/rpc"
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
"$python" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/protos/*.proto
sed -i -E 's/^import ([a-z_0-9]+_pb2) as /from . import \1 as /' "$out"/*_pb2*.py
