"""The network services over the Python API: gRPC (``serve grpc``), and who may call them."""
