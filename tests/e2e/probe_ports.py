"""Knock on a Ray head's ports from another machine, with and without the auth token.

    python probe_ports.py HEAD_IP TOKEN   ->   one JSON object on stdout

For the GCS (6379) and the Ray Client server (10001), one gRPC call each
(``NodeInfoGcsService.GetClusterId``, ``RayletDriver.ClusterInfo``) without
metadata and with ``authorization: Bearer TOKEN``; the answer is the gRPC
status name (``OK``, ``UNAUTHENTICATED``, ...). For the dashboard (8265), whether
a TCP connection can be opened at all. Run inside the provider machine by the
end-to-end test; uses this venv's Ray for the generated stubs.
"""

from __future__ import annotations

import json
import socket
import sys

import grpc
from ray.core.generated import (
    gcs_service_pb2,
    gcs_service_pb2_grpc,
    ray_client_pb2,
    ray_client_pb2_grpc,
)


def _status(call, request, metadata) -> str:
    try:
        call(request, metadata=metadata, timeout=30)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def main(host: str, token: str) -> dict:
    out = {}
    for name, with_token in (("no_token", False), ("token", True)):
        metadata = [("authorization", f"Bearer {token}")] if with_token else []
        with grpc.insecure_channel(f"{host}:6379") as ch:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch)
            out[f"gcs_{name}"] = _status(stub.GetClusterId, gcs_service_pb2.GetClusterIdRequest(),
                                         metadata)
        with grpc.insecure_channel(f"{host}:10001") as ch:
            stub = ray_client_pb2_grpc.RayletDriverStub(ch)
            request = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
            out[f"client_{name}"] = _status(stub.ClusterInfo, request, metadata)
    try:
        socket.create_connection((host, 8265), timeout=10).close()
        out["dashboard_tcp"] = "open"
    except OSError as e:
        out["dashboard_tcp"] = type(e).__name__
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), sort_keys=True))
