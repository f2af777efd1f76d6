"""The Open Inference Protocol (KServe V2) over gRPC (serving.grpc_port).

grpc_predict_v2.proto and the modules generated from it (bin/gen-grpc) live here. Import
this package's modules only when gRPC is on: tritonclient.grpc registers the same
`inference.*` message names in protobuf's default pool, and one process cannot hold both
(the tests' client side never imports these)."""
