"""Generated gRPC stubs for protos/*.proto (run `make protos`; never committed)."""
