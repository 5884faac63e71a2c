"""Function sizes across the tree: `python tools/function_sizes.py [--limit N] [PATH ...]`.

Prints the distribution of function lengths (lines from the signature to the closing line)
for Python (including @triton.jit kernels), C++ and CUDA sources, then every function longer
than the limit (80 lines by default), longest first. Python functions are found with `ast`;
C++/CUDA functions with a brace scan over the source with comments and literals blanked: a
`{` whose header reads like a signature (`name(...)`, not a control statement, a namespace,
a type or an initializer) opens a function, and anything nested in it (lambdas, loops)
counts towards it. Module-level data tables are not functions, so they are never listed.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATHS = (
    "pykernels",
    "triton_kernels",
    "csrc",
    "tests",
    "benchmarks",
    "examples",
    "tools",
    "setup.py",
)
PY = (".py",)
CPP = (".cpp", ".h", ".cu", ".cuh")
BUCKETS = (20, 40, 60, 80, 120, 200)
NOT_FUNCTIONS = re.compile(
    r"^(if|for|while|switch|catch|do|else|return|namespace|struct|class|"
    r"union|enum|extern|using|typedef)\b"
)


def python_functions(path: str, text: str):
    """(name, first line, length) of every def in the file, nested ones included."""
    for node in ast.walk(ast.parse(text, path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node.name, first, node.end_lineno - first + 1


def _blank_comments_and_literals(text: str) -> str:
    """The source with comments, strings and char literals replaced by spaces (newlines kept),
    so braces inside them do not count."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _signature_name(header: str) -> str | None:
    """The function's name when the text before a `{` is a function signature, else None."""
    header = re.sub(r"\s+", " ", header).strip()
    header = re.sub(r"^template ?<.*?> ?", "", header)
    if not header or "(" not in header or NOT_FUNCTIONS.match(header):
        return None
    head = header[: header.index("(")]
    if "=" in head or head.rstrip().endswith(("]", ">")) and "operator" not in head:
        return None  # an initializer, a lambda or a kernel launch
    m = re.search(r"([~\w:]+|operator\s*\S+)\s*$", head)
    return m.group(1) if m else None


def cpp_functions(path: str, text: str):
    """(name, first line, length) of every C++/CUDA function outside another function."""
    src = _blank_comments_and_literals(text)
    stack = []  # per open brace: the function name it opened, or None
    last = 0  # where the current header began (after the last ; { or })
    for i, ch in enumerate(src):
        if ch == "{":
            inside = any(entry is not None for entry in stack)
            name = None if inside else _signature_name(src[last:i])
            if name is not None:
                start = last + len(src[last:i]) - len(src[last:i].lstrip())
                name = (name, src.count("\n", 0, start) + 1)
            stack.append(name)
            last = i + 1
        elif ch == "}":
            entry = stack.pop() if stack else None
            if entry is not None:
                end = src.count("\n", 0, i) + 1
                yield entry[0], entry[1], end - entry[1] + 1
            last = i + 1
        elif ch == ";" or (ch == "\n" and src[last:i].lstrip().startswith("#")):
            last = i + 1


def source_files(paths):
    for p in paths:
        full = os.path.join(ROOT, p)
        if os.path.isfile(full):
            yield p
            continue
        for dirpath, dirnames, filenames in os.walk(full, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            for f in sorted(filenames):
                if f.endswith(PY + CPP):
                    yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def all_functions(paths):
    for rel in source_files(paths):
        if os.path.islink(os.path.join(ROOT, rel)):
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            text = f.read()
        find = python_functions if rel.endswith(PY) else cpp_functions
        for name, line, length in find(rel, text):
            yield rel, name, line, length


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    parser.add_argument("--limit", type=int, default=80, help="list functions longer than this")
    args = parser.parse_args(argv)
    found = list(all_functions(args.paths))
    lengths = [n for *_, n in found]
    print(f"{len(found)} functions; lines per function:")
    lo = 0
    for hi in BUCKETS + (None,):
        count = sum(1 for n in lengths if n > lo and (hi is None or n <= hi))
        label = f"{lo + 1}-{hi}" if hi is not None else f"> {lo}"
        print(f"  {label:>9}: {count}")
        lo = hi
    long = sorted((f for f in found if f[3] > args.limit), key=lambda f: -f[3])
    print(f"\n{len(long)} functions over {args.limit} lines:")
    for rel, name, line, length in long:
        print(f"  {length:5d}  {rel}:{line}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
