"""Generated gRPC and protobuf code (see server/proto_gen.py); never edit by hand."""
