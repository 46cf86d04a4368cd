"""KServe V2 over gRPC: converters.py (protobuf <-> types), service.py, interceptors.py, server.py."""
