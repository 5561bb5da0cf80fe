"""The code's shape against STYLE.md's goals: parameter lists over 6 and functions over 60 lines, in the project's
own modules (tests and scripts apart). Prints each and the two counts; --json writes them.

    python scripts/shape.py            # the lists, then: "params>6: N, lines>60: M"
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("engine", "loaders", "models", "mining", "eval")
TOP = ("train.py", "flags.py", "extensions.py")
MAX_PARAMS, MAX_LINES = 6, 60


def files() -> list[str]:
    out = [os.path.join(ROOT, f) for f in TOP]
    for p in PACKAGES:
        for d, _, names in os.walk(os.path.join(ROOT, p)):
            out += [os.path.join(d, n) for n in sorted(names) if n.endswith(".py")]
    return sorted(out)


def params(fn: ast.FunctionDef) -> int:
    """Parameters a caller can pass (self and cls not counted; *args and **kwargs count one each)."""
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    n = len(names) - (1 if names and names[0] in ("self", "cls") else 0)
    return n + (a.vararg is not None) + (a.kwarg is not None)


def measure() -> dict:
    wide, long_ = [], []
    for path in files():
        tree = ast.parse(open(path).read(), path)
        rel = os.path.relpath(path, ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{rel}:{node.lineno} {node.name}"
                if params(node) > MAX_PARAMS:
                    wide.append(f"{where} ({params(node)} parameters)")
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long_.append(f"{where} ({lines} lines)")
    return {"params_over_6": wide, "lines_over_60": long_}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    m = measure()
    for k, v in m.items():
        print(f"{k}:")
        for x in v:
            print(f"  {x}")
    print(f"params>6: {len(m['params_over_6'])}, lines>60: {len(m['lines_over_60'])} "
          f"(goal: at most 10 and 2)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(m, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
