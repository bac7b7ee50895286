"""Generated gRPC stubs for segtme.v1 (see segtme.server.gen_proto). Do not edit."""
