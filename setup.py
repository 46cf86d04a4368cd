"""Build steps pyproject.toml cannot express: Cython extensions and gRPC code generation.

RUNTIME_NO_EXTENSIONS=1 builds a pure-Python install (the numpy twins serve).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).parent.resolve()
PROTO_DIR = ROOT / "protos"
PB_OUT = ROOT / "runtime" / "_pb"


def generate_protos() -> None:
    """Compile protos/*.proto into runtime/_pb (imports made package-relative)."""
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={PB_OUT}",
        f"--pyi_out={PB_OUT}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))
    # The servers register their methods through generic handlers, so no *_pb2_grpc stubs are made
    # (they would pin grpcio to at least the generator's version).
    for stale in PB_OUT.glob("*_pb2_grpc.py"):
        stale.unlink()
    stems = {p.stem for p in protos}
    for generated in sorted(PB_OUT.glob("*_pb2*.py*")):
        generated.write_text(_package_relative(generated.read_text(), generated.name, stems))


class ProtocLayoutError(RuntimeError):
    """protoc's output no longer has the layout the rewrite below expects: fail the build, never skip."""


def _replace_once(text: str, pattern: str, replacement: str, name: str, what: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise ProtocLayoutError(
            f"{name}: expected exactly one {what} (pattern {pattern!r}) in protoc's output, found {count}; "
            "grpcio-tools changed its generated code: update setup.py's rewrite"
        )
    return new


def _package_relative(text: str, name: str, stems: set[str]) -> str:
    """protoc's module text, made to live in runtime._pb. Each rewrite must match exactly where expected."""
    if name.endswith(".py"):
        # Register into the package's private pool (see runtime/_pb/__init__.py).
        text = _replace_once(
            text, r"_descriptor_pool\.Default\(\)\.AddSerializedFile\(", "_POOL.AddSerializedFile(", name,
            "registration into the default descriptor pool",
        )
        text = _replace_once(
            text, r"^from google\.protobuf\.internal import builder as _builder\n",
            "from google.protobuf.internal import builder as _builder\nfrom . import POOL as _POOL\n", name,
            "builder import",
        )
        # The generator's protobuf may be newer than the runtime's (the build runs in its own
        # environment). The modules only use builder APIs that protobuf >= 5.26 has, so drop the
        # check that would refuse an older runtime (generators before protobuf 5.26 emit none).
        if "ValidateProtobufRuntimeVersion" in text:
            text = _replace_once(
                text, r"^_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", name,
                "runtime version check",
            )
    # protoc emits absolute imports ("import model_config_pb2 as ..."); our modules live in a package.
    absolute = re.compile(r"^import (\w+_pb2)\b", re.MULTILINE)
    for module in absolute.findall(text):
        if module[: -len("_pb2")] not in stems:
            raise ProtocLayoutError(f"{name}: imports {module}, which protos/ does not generate")
    text = absolute.sub(r"from . import \1", text)
    if re.search(r"^\s*import \w+_pb2\b", text, flags=re.MULTILINE):
        raise ProtocLayoutError(f"{name}: an absolute import of a generated module is left after the rewrite")
    return text


class GenerateProtos(Command):
    description = "generate gRPC/protobuf modules from protos/"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_protos()


class BuildPy(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


class Develop(develop):
    def run(self) -> None:
        generate_protos()
        super().run()


def extensions() -> list:
    if os.environ.get("RUNTIME_NO_EXTENSIONS") == "1":
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    modules = [
        # csrc/<package>.pyx builds runtime.<package>._<package> (csrc/codec.pyx -> runtime.codec._codec).
        Extension(
            f"runtime.{pyx.stem}._{pyx.stem}",
            [str(pyx.relative_to(ROOT))],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"],
        )
        for pyx in sorted((ROOT / "csrc").glob("*.pyx"))
    ]
    return cythonize(modules, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPy, "develop": Develop, "generate_protos": GenerateProtos},
)
