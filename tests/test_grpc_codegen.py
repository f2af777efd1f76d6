"""The committed gRPC modules are what bin/gen-grpc makes from the committed .proto with the
pinned grpcio-tools, byte for byte; and they load cleanly with the pinned protobuf and grpcio
(no version warning) in a process of their own (see cnetd/grpcapi/__init__.py for why not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    done = subprocess.run([str(REPO / "bin" / "gen-grpc"), str(tmp_path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = (tmp_path / "cnetd" / "grpcapi" / name).read_bytes()
        assert fresh == (REPO / "cnetd" / "grpcapi" / name).read_bytes(), f"{name} differs: run bin/gen-grpc and commit"


def test_the_generator_refuses_another_grpcio_tools_version(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then echo 0.0.1; exit 0; fi\nexec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    done = subprocess.run([str(REPO / "bin" / "gen-grpc"), str(tmp_path / "out")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)}, timeout=60)
    assert done.returncode == 1 and "needs grpcio-tools 1." in done.stderr and "found 0.0.1" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_the_modules_load_without_warnings() -> None:
    code = ("from cnetd.grpcapi import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as g;"
            "names = [m.name for m in pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].methods];"
            "print(pb.DESCRIPTOR.package, *names)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inference", "ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                   "ModelMetadata", "ModelInfer"]
