"""Exit 0 when the gRPC service at ADDRESS reports SERVING: `python -m services.grpc_lifecycle.probe HOST:PORT`.
Used by container healthchecks."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as error:
        print(f"{address}: {error.code().name}", file=sys.stderr)
        sys.exit(1)
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
