"""Generates the protobuf bindings from ../proto when the package is built."""

import pathlib
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent / "proto"
SCHEMA = "switchboard/v1/signal.proto"


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", str(PROTO_ROOT / SCHEMA)])
        if rc != 0:
            raise SystemExit(f"protoc failed on {SCHEMA} ({rc})")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(pathlib.Path(tmp) / "switchboard/v1/signal_pb2.py", out_dir / "signal_pb2.py")


class BuildWithBindings(build_py):
    def run(self):
        super().run()
        generate(pathlib.Path(self.build_lib) / "switchboard_signaling")


setup(cmdclass={"build_py": BuildWithBindings})
