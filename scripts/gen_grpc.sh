#!/usr/bin/env bash
# Regenerates app/api/v2/grpc/*_pb2*.py from grpc_predict_v2.proto (needs grpcio-tools,
# a test dependency). The generated modules are committed so that serving needs only
# grpcio and protobuf.
set -euo pipefail
cd "$(dirname "$0")/../app/api/v2/grpc"
"${PYTHON:-python}" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  grpc_predict_v2.proto
# the generated service module imports its messages as a top-level module; make it relative
sed -i 's/^import grpc_predict_v2_pb2 as/from . import grpc_predict_v2_pb2 as/' \
  grpc_predict_v2_pb2_grpc.py
