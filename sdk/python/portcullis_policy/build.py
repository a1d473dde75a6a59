"""`portcullis-policy build`: a policy folder (policy.py and the modules it imports) →
a WebAssembly component, with the contract shipped inside this package.

    portcullis-policy build [DIR] [-o OUT]

DIR defaults to the current folder, OUT to DIR/<DIR's name>.wasm; a relative OUT is relative to
where the command runs. The component's path is printed on stdout (componentize-py's own
output goes to stderr). Only DIR's `*.py` files and its package folders (those with an
`__init__.py`, not hidden) are built in, with this package's policy API: a virtual
environment or other files inside DIR never reach the component.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
WIT = _PACKAGE / "wit"
WORLD = "plugin"


def _stage(source: Path, into: Path) -> None:
    """The author's modules and this package's policy API, nothing else."""
    for entry in sorted(source.iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_file() and entry.suffix == ".py":
            shutil.copy2(entry, into / entry.name)
        elif entry.is_dir() and (entry / "__init__.py").is_file() and entry.name != "portcullis_policy":
            shutil.copytree(entry, into / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
    api = into / "portcullis_policy"
    api.mkdir()
    for name in ("__init__.py", "_guest.py"):
        shutil.copy2(_PACKAGE / name, api / name)


def build(source: Path, out: Path, module: str = "policy") -> Path:
    """Builds the component; returns its absolute path. Raises `SystemExit` with a message a
    person can act on when the input is not a policy folder or componentize-py fails."""
    source = source.resolve()
    if not (source / f"{module}.py").is_file():
        raise SystemExit(f"portcullis-policy build: {source / (module + '.py')} not found")
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portcullis-policy-") as stage:
        _stage(source, Path(stage))
        tmp = out.with_name(f".{out.name}.tmp")
        # componentize-py's CLI, run by this interpreter: the one this package was installed with.
        command = [
            sys.executable,
            "-c",
            "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
            "-d", str(WIT), "-w", WORLD, "componentize", "-p", stage, module, "-o", str(tmp),
        ]
        done = subprocess.run(command, cwd=stage, stdout=sys.stderr)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise SystemExit(f"portcullis-policy build: componentize-py failed (exit {done.returncode})")
        tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="portcullis-policy",
        description="Build a Portcullis policy written in Python into a WebAssembly component.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build DIR/policy.py into a component")
    b.add_argument("dir", nargs="?", default=".", help="the policy folder (default: .)")
    b.add_argument("-o", "--out", help="the component to write (default: DIR/<DIR's name>.wasm)")
    b.add_argument("--module", default="policy", help="the module with the Policy class (default: policy)")
    commands.add_parser("wit", help="print the path of the contract (wit/) this package builds with")
    args = parser.parse_args(argv)
    if args.command == "wit":
        print(WIT)
        return 0
    source = Path(args.dir)
    out = Path(args.out) if args.out else source.resolve() / f"{source.resolve().name}.wasm"
    print(build(source, out, args.module))
    return 0


if __name__ == "__main__":
    sys.exit(main())
