"""The Open Inference Protocol's gRPC service (``grpc_predict_v2.proto``) and its generated
Python code (flowlearn.serving.protocol.generate; served by flowlearn.serving.v2_grpc)."""
