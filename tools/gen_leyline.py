#!/usr/bin/env python
"""Regenerate (or verify) the checked-in Leyline v1 protobuf bindings.

Usage:
    python tools/gen_leyline.py           # rewrite kasmina/leyline/leyline_pb2.py{,i}
    python tools/gen_leyline.py --check   # exit 1 if the checked-in files are stale

Generation runs ``python -m grpc_tools.protoc`` from the repository root so
the output is byte-for-byte reproducible for a given grpcio-tools version.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
PROTO_DIR_REL: str = "kasmina/leyline"
PROTO_FILE_REL: str = f"{PROTO_DIR_REL}/leyline.proto"
GENERATED_FILES: tuple[str, ...] = ("leyline_pb2.py", "leyline_pb2.pyi")
REGEN_HINT: str = "python tools/gen_leyline.py"


def generate(out_dir: Path) -> None:
    """Run protoc on ``leyline.proto``, writing ``leyline_pb2.py``/``.pyi`` into *out_dir*."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR_REL}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        PROTO_FILE_REL,
    ]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"protoc failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )


def check() -> tuple[bool, str]:
    """Regenerate into a temp dir and compare with the checked-in files.

    Returns ``(True, "ok")`` when every generated file matches byte-for-byte,
    otherwise ``(False, "stale: <file> (run python tools/gen_leyline.py)")``
    naming the first mismatching (or missing) file.
    """
    checked_in_dir = REPO_ROOT / PROTO_DIR_REL
    with tempfile.TemporaryDirectory(prefix="gen_leyline_") as tmp:
        tmp_dir = Path(tmp)
        generate(tmp_dir)
        for name in GENERATED_FILES:
            fresh = (tmp_dir / name).read_bytes()
            existing_path = checked_in_dir / name
            existing = existing_path.read_bytes() if existing_path.is_file() else None
            if existing != fresh:
                return False, f"stale: {PROTO_DIR_REL}/{name} (run {REGEN_HINT})"
    return True, "ok"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify the checked-in bindings match a fresh generation (exit 1 if stale)",
    )
    args = parser.parse_args(argv)

    if args.check:
        ok, message = check()
        print(message)
        return 0 if ok else 1

    generate(REPO_ROOT / PROTO_DIR_REL)
    print(f"generated {', '.join(f'{PROTO_DIR_REL}/{n}' for n in GENERATED_FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
