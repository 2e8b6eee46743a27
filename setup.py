"""Build hook: generate the Python protobuf/gRPC stubs from proto/ (the only source of the contract).

The stubs land in idcheck/v1/ (git-ignored) so that the generated imports (`from idcheck.v1 import ...`)
resolve inside our package. Runs for wheels, sdists and editable installs alike.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent


def generate_protos() -> None:
    from grpc_tools import protoc  # build requirement (pyproject [build-system])

    proto_root = ROOT / "proto"
    files = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "idcheck").rglob("*.proto"))
    if not files:
        raise SystemExit("no .proto files found under proto/idcheck")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
    ]
    # Typed stubs (.pyi) when mypy-protobuf's plugins are installed beside this interpreter.
    # (pip puts an isolated build environment's scripts on PATH.)
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join([os.environ.get("PATH", ""), bindir])
    mypy_plugin = shutil.which("protoc-gen-mypy", path=path)
    mypy_grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=path)
    if mypy_plugin and mypy_grpc_plugin:
        args += [
            f"--plugin=protoc-gen-mypy={mypy_plugin}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
            f"--mypy_out={ROOT}",
            f"--mypy_grpc_out={ROOT}",
        ]
    if protoc.main([*args, *files]) != 0:
        raise SystemExit("protoc failed on " + " ".join(files))
    for pkg in {(ROOT / f).parent for f in files}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by the build; do not edit."""\n')


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class EggInfoWithProtos(egg_info):
    def run(self) -> None:
        generate_protos()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos, "egg_info": EggInfoWithProtos})
