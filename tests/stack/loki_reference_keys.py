"""Extract every config key path, with its documented type, from Loki's configuration reference.

Loki's reference (docs/sources/shared/configuration.md) is generated from its Go config structs,
one fenced YAML block per config block, leaves written ``[key: <type> | default = ...]`` and blocks
referenced as ``[key: <block_name>]``. This script walks it from the root block and prints
``key.path<TAB>type``, list items as ``key[]``. The test for the Loki renderer reads the output,
kept in loki_3_7_0_config_keys.tsv, to check that every key it renders exists in Loki 3.7.0 with
a value of the documented type. Regenerate with:

    git -C LOKI_CLONE show v3.7.0:docs/sources/shared/configuration.md \\
      | python tests/stack/loki_reference_keys.py - auth_enabled,server,common,schema_config,limits_config,compactor,analytics \\
      > tests/stack/loki_3_7_0_config_keys.tsv
"""

from __future__ import annotations

import re
import sys

LEAF = re.compile(r"^(\s*)\[(\w+): (.*?)(?: \| default = .*)?\]\s*$")
BLOCK = re.compile(r"^(\s*)(\w+):\s*$")
MAX_DEPTH = 6  # block references nest; nothing we render is deeper


def sections(text: str) -> dict[str, str]:
    found = {"__root__": re.search(r"### Supported contents and default values of `loki.yaml`.*?```yaml\n(.*?)```",
                                   text, re.S).group(1)}
    for match in re.finditer(r"^### (\w+)\n.*?```yaml\n(.*?)```", text, re.S | re.M):
        found[match.group(1)] = match.group(2)
    return found


def walk(blocks: dict[str, str], block: str, prefix: str, out: dict[str, str], depth: int = 0) -> None:
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = LEAF.match(line) or BLOCK.match(line)
        if not match or line.strip().startswith("#"):
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else prefix
        path = f"{parent}.{match.group(2)}" if parent else match.group(2)
        if match.re is BLOCK:
            out[path] = "block"
            stack.append((indent, path))
            continue
        kind = match.group(3)
        ref = re.fullmatch(r"<(\w+)>", kind)
        items = re.fullmatch(r"<list of (\w+?)s?>", kind)
        if ref and ref.group(1) in blocks and depth < MAX_DEPTH:
            out[path] = "block"
            walk(blocks, blocks[ref.group(1)], path, out, depth + 1)
        elif items and items.group(1) in blocks and depth < MAX_DEPTH:
            out[path] = "list"
            walk(blocks, blocks[items.group(1)], f"{path}[]", out, depth + 1)
        else:
            out[path] = kind


def main(argv: list[str]) -> int:
    text = sys.stdin.read() if argv[1] == "-" else open(argv[1], encoding="utf-8").read()
    tops = set(argv[2].split(",")) if len(argv) > 2 else None
    blocks = sections(text)
    out: dict[str, str] = {}
    walk(blocks, blocks["__root__"], "", out)
    print("# Loki v3.7.0 config keys (docs/sources/shared/configuration.md), by tests/stack/loki_reference_keys.py")
    for path in sorted(out):
        if tops is None or path.split(".")[0] in tops:
            print(f"{path}\t{out[path]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
