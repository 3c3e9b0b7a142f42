"""Generates the protobuf bindings from ../proto when the package is built."""

import hashlib
import pathlib
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent / "proto"
SCHEMA = "switchboard/v1/signal.proto"
# The SDP dictionary (docs/PROTOCOL.md section 7), shipped inside the package.
DICTIONARY = HERE.parent / "crates/protocol/src/sdp_dictionary_v1.txt"
DICTIONARY_SHA256 = "a71e6750ab4dcbafea130da5069cc509fa0d26487de05aed76dc6152a64f99ba"


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", str(PROTO_ROOT / SCHEMA)])
        if rc != 0:
            raise SystemExit(f"protoc failed on {SCHEMA} ({rc})")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(pathlib.Path(tmp) / "switchboard/v1/signal_pb2.py", out_dir / "signal_pb2.py")
    data = DICTIONARY.read_bytes()
    if hashlib.sha256(data).hexdigest() != DICTIONARY_SHA256:
        raise SystemExit(f"{DICTIONARY} is not dictionary 1 (its SHA-256 differs)")
    (out_dir / "sdp_dictionary_v1.txt").write_bytes(data)


class BuildWithBindings(build_py):
    def run(self):
        super().run()
        generate(pathlib.Path(self.build_lib) / "switchboard_signaling")


setup(cmdclass={"build_py": BuildWithBindings})
