"""Bounded reading of the documents users hand the pipeline (manifests, reports, label files).

A document from a user or a pull request must cost bounded memory and time to refuse. YAML is
the dangerous one: aliases make a 1 kB file expand to gigabytes ("billion laughs": nine levels
of nine aliases each are 9**9 nodes), and PyYAML expands them while constructing Python
objects. So YAML is composed first (aliases stay references to one node, linear in the text),
its expanded size is counted on that graph, and only a document within every limit is
constructed. JSON has no aliases: its size bounds its memory, and depth is checked before the
recursive decoder sees it. Text files read line by line (dataset label files) have a size cap.

The limits, and the environment variables that change them (docs/usage.md, "Limits"):

    MODEL_CONVERT_MAX_DOCUMENT_BYTES  16 MiB     any YAML or JSON document, and label files
                                                 up to 4x this (ImageNet train.txt is ~40 MB)
    MODEL_CONVERT_MAX_YAML_NODES      100000     nodes after alias expansion (all.yaml: 1,115)
    MODEL_CONVERT_MAX_YAML_ALIASES    1000       alias references (*name)
    MODEL_CONVERT_MAX_NESTING         64         nesting depth of YAML and JSON
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import yaml

DEFAULTS = {"MODEL_CONVERT_MAX_DOCUMENT_BYTES": 16 * 2**20,
            "MODEL_CONVERT_MAX_YAML_NODES": 100_000,
            "MODEL_CONVERT_MAX_YAML_ALIASES": 1_000,
            "MODEL_CONVERT_MAX_NESTING": 64}
LABEL_FILE_FACTOR = 4


class DocumentTooLarge(ValueError):
    """A document exceeds a limit; the message names the file, the figure and the limit."""


def limit(name: str) -> int:
    """The limit NAME: its environment variable if set (a positive integer), else default."""
    raw = os.environ.get(name)
    if raw is None:
        return DEFAULTS[name]
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a positive integer")
    return value


def _refuse(label: str, what: str, name: str) -> DocumentTooLarge:
    return DocumentTooLarge(f"{label}: refused before loading: {what} (the limit is "
                            f"{name}={limit(name)}; docs/usage.md, 'Limits')")


def read_bounded(path: Path, label: str | None = None, factor: int = 1) -> str:
    """The file's text, refused before reading when it is over the byte limit (x factor).
    Only regular files: a FIFO or a device (/dev/zero) is refused, not read forever."""
    label = label or str(path)
    path = Path(path)
    if not stat.S_ISREG(path.stat().st_mode):
        raise DocumentTooLarge(f"{label}: refused: not a regular file")
    most = limit("MODEL_CONVERT_MAX_DOCUMENT_BYTES") * factor
    with open(path, "rb") as handle:
        data = handle.read(most + 1)        # a file growing while read stops here too
    if len(data) > most:
        size = max(path.stat().st_size, len(data))
        raise DocumentTooLarge(f"{label}: refused: {size:,} bytes, over the limit of "
                               f"{most:,} (MODEL_CONVERT_MAX_DOCUMENT_BYTES"
                               f"{f' x {factor}' if factor > 1 else ''}; docs/usage.md, 'Limits')")
    return data.decode("utf-8")


def _check_text(text: str, label: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > limit("MODEL_CONVERT_MAX_DOCUMENT_BYTES"):
        raise _refuse(label, f"{len(text):,} characters", "MODEL_CONVERT_MAX_DOCUMENT_BYTES")


def _expanded_size(root: yaml.Node, label: str) -> None:
    """Count the nodes the document would have once every alias is expanded, without
    expanding: a shared node's size is computed once and added at every reference."""
    max_nodes, max_depth = limit("MODEL_CONVERT_MAX_YAML_NODES"), limit("MODEL_CONVERT_MAX_NESTING")
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        # depth: the collections around this node. A collection at max_depth would be one
        # more than the limit (a scalar there is not: `[[1]]` is two levels, as in JSON).
        if depth >= max_depth and isinstance(node, yaml.CollectionNode):
            raise _refuse(label, f"nested more than {max_depth} levels deep",
                          "MODEL_CONVERT_MAX_NESTING")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise DocumentTooLarge(f"{label}: refused: an alias refers to a node that "
                                   "contains it (a recursive document)")
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > max_nodes:
                raise _refuse(label, f"its aliases expand to more than {max_nodes:,} nodes",
                              "MODEL_CONVERT_MAX_YAML_NODES")
        open_.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _count_aliases(text: str, loader_cls, label: str) -> None:
    aliases, most = 0, limit("MODEL_CONVERT_MAX_YAML_ALIASES")
    loader = loader_cls(text)
    try:
        while (event := loader.get_event()) is not None:   # the parser: flat, no recursion
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > most:
                    raise _refuse(label, f"more than {most:,} aliases",
                                  "MODEL_CONVERT_MAX_YAML_ALIASES")
            if isinstance(event, yaml.StreamEndEvent):
                break
    finally:
        loader.dispose()


class _TooDeep(Exception):
    pass


class _DepthGuard:
    """Scanner hooks: stop at the nesting limit while scanning. PyYAML's scanner revisits
    every open flow level for every token, so 600 kB of '[' would take hours to reject
    after the fact."""

    def fetch_flow_collection_start(self, token_class):
        if self.flow_level >= limit("MODEL_CONVERT_MAX_NESTING"):
            raise _TooDeep
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column):
        if len(self.indents) >= limit("MODEL_CONVERT_MAX_NESTING"):
            raise _TooDeep
        return super().add_indent(column)


def _guarded(loader_cls):
    return type(f"Bounded{loader_cls.__name__}", (_DepthGuard, loader_cls), {})


def load_yaml(text: str, label: str, loader_cls=yaml.SafeLoader):
    """Parse one YAML document within the limits; raises DocumentTooLarge or yaml.YAMLError."""
    _check_text(text, label)
    loader_cls = _guarded(loader_cls)
    try:
        _count_aliases(text, loader_cls, label)
    except _TooDeep:
        raise _refuse(label, f"nested more than {limit('MODEL_CONVERT_MAX_NESTING')} levels "
                             "deep", "MODEL_CONVERT_MAX_NESTING") from None
    loader = loader_cls(text)
    try:
        try:
            root = loader.get_single_node()
        except (RecursionError, _TooDeep):
            raise _refuse(label, "nested too deep to parse", "MODEL_CONVERT_MAX_NESTING"
                          ) from None
        if root is None:
            return None
        _expanded_size(root, label)
        return loader.construct_document(root)
    finally:
        loader.dispose()


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth_ok(text: str, label: str) -> None:
    """Refuse JSON nested deeper than the limit, by a flat scan (strings skipped), before
    the recursive decoder sees it."""
    most = limit("MODEL_CONVERT_MAX_NESTING")
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > most:
                raise _refuse(label, f"nested more than {most} levels deep",
                              "MODEL_CONVERT_MAX_NESTING")
        elif token in "]}":
            depth -= 1


def load_json(text: str, label: str):
    """Parse JSON within the limits; raises DocumentTooLarge or ValueError."""
    _check_text(text, label)
    _json_depth_ok(text, label)
    return json.loads(text)


def read_json(path: Path, label: str | None = None):
    """A JSON file from a user or another run (a report), within the limits."""
    label = label or str(path)
    return load_json(read_bounded(path, label), label)
