"""Size of the package: lines, modules over 400 lines, functions over 60 lines.

    .venv/bin/python scripts/code_size.py [PACKAGE_DIR] [--module-lines 400] [--function-lines 60]

Counts every line of every ``.py`` file (docstrings and comments included) and measures
each function and method from its ``def`` line to its last line (decorators left out).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def sizes(root: Path) -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
    """(total lines, [(lines, module)], [(lines, module:line::function)]) under ``root``."""
    total, modules, functions = 0, [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        total += n
        modules.append((n, str(path)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                functions.append((length, f"{path}:{node.lineno}::{node.name}"))
    return total, modules, functions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", nargs="?", default="napari_vertebra", type=Path)
    p.add_argument("--module-lines", type=int, default=400)
    p.add_argument("--function-lines", type=int, default=60)
    args = p.parse_args()
    total, modules, functions = sizes(args.root)
    big = sorted((m for m in modules if m[0] > args.module_lines), reverse=True)
    long = sorted((f for f in functions if f[0] > args.function_lines), reverse=True)
    print(f"lines in {args.root}: {total} in {len(modules)} modules")
    print(f"modules over {args.module_lines} lines: {len(big)}")
    for n, name in big:
        print(f"  {n:5d}  {name}")
    print(f"functions over {args.function_lines} lines: {len(long)}")
    for n, name in long:
        print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
