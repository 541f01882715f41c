"""An honest etcd v3 client for the side-by-side benchmark: Python gRPC
stubs generated, at bench time, from the ``.proto`` files that Debian's
``golang-etcd-server-dev`` package ships (etcd's own API definitions).

The gogoproto and HTTP-gateway annotations in those files only steer Go code
generation; they are stripped before ``protoc`` runs, which leaves the wire
format unchanged. Nothing of etcd's is kept in this repository.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

ETCD_SRC = Path("/usr/share/gocode/src/go.etcd.io/etcd")
FILES = {
    "etcd/etcdserver/etcdserverpb/rpc.proto": "etcdserver/etcdserverpb/rpc.proto",
    "etcd/mvcc/mvccpb/kv.proto": "mvcc/mvccpb/kv.proto",
    "etcd/auth/authpb/auth.proto": "auth/authpb/auth.proto",
}


def _strip(text: str) -> str:
    text = re.sub(r'import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text)
    text = re.sub(r"option \(gogoproto\.[^;]*;\n", "", text)
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    return _drop_http_bodies(text)


def _drop_http_bodies(text: str) -> str:
    """``rpc X(A) returns (B) { option (google.api.http) = {...}; }`` -> ``...returns (B);``"""
    pattern = re.compile(r"\)\s*\{\s*option \(google\.api\.http\)")
    while (match := pattern.search(text)) is not None:
        start = text.index("{", match.start())
        depth, pos = 0, start
        while True:
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    break
            pos += 1
        text = text[: match.start()] + ");" + text[pos + 1 :]
    return text


def load_stubs(build_dir: Path, *, generate: bool = True) -> tuple[ModuleType, ModuleType]:
    """Generate (unless already done) and import (rpc_pb2, rpc_pb2_grpc) for
    etcd's KV and Maintenance APIs."""
    if generate:
        _generate(build_dir)
    if str(build_dir) not in sys.path:
        sys.path.insert(0, str(build_dir))
    rpc_pb2 = importlib.import_module("etcd.etcdserver.etcdserverpb.rpc_pb2")
    rpc_grpc = importlib.import_module("etcd.etcdserver.etcdserverpb.rpc_pb2_grpc")
    return rpc_pb2, rpc_grpc


def _generate(build_dir: Path) -> None:
    from grpc_tools import protoc

    if not ETCD_SRC.exists():
        raise FileNotFoundError(
            f"{ETCD_SRC} is missing: install Debian's golang-etcd-server-dev (make bench does)"
        )
    for target, source in FILES.items():
        out = build_dir / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_strip((ETCD_SRC / source).read_text()))
    args = ["protoc", f"-I{build_dir}", f"--python_out={build_dir}", f"--grpc_python_out={build_dir}", *FILES]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on etcd's proto files")
    for pkg in ("etcd", "etcd/etcdserver", "etcd/etcdserver/etcdserverpb", "etcd/mvcc",
                "etcd/mvcc/mvccpb", "etcd/auth", "etcd/auth/authpb"):
        (build_dir / pkg / "__init__.py").touch()
