"""Append one entry to a manifest file (`pipeline.py add`), keeping the rest of the file as
written: comments, anchors and order stay; the entry goes at the end of the `models:` list.

The new text is validated by the loader (manifests/loader.py) before it replaces the file,
and the file is replaced atomically: a refused entry leaves the manifest untouched.
Framework-free: what the source says about the model comes in as a dict
(orchestrator/derive.py).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path

import yaml

from converters.registry import SOURCES
from manifests.loader import ManifestError, load_manifest

HEADER = "version: 1\nmodels:\n"


def default_name(source: str, model_id: str) -> str:
    """A valid entry name (schema: ^[a-z0-9][a-z0-9._-]*$) from the model id."""
    name = re.sub(r"[^a-z0-9._-]+", "-", model_id.lower()).strip("-._")
    # short ids collide across zoos: converters/registry.py says which sources prefix them
    return f"{source}-{name}" if SOURCES[source].prefixed_names else name


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of numbers (mean, std)."""


def _list(dumper, data):
    flow = all(isinstance(x, (int, float)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def render(entry: dict, comment: list[str], indent: str = "  ") -> str:
    """The entry as a list item indented by INDENT (manifests/all.yaml's two spaces unless
    the file's own items say otherwise), comments first."""
    body = yaml.dump([entry], Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)
    lines = [f"{indent}# {c}" if c else f"{indent}#" for c in comment]
    lines += [indent + line if line else line for line in body.splitlines()]
    return "\n".join(lines) + "\n"


def _item_indent(text: str) -> str:
    """The indent of the `models:` list's items in TEXT (two spaces when it has none yet)."""
    after = re.split(r"^models:", text, maxsplit=1, flags=re.MULTILINE)[-1]
    found = re.findall(r"^( *)- ", after, flags=re.MULTILINE)
    return found[0] if found else "  "


def duplicate(entries, entry: dict) -> str | None:
    """Why ENTRY is already in the manifest, or None."""
    for index, other in enumerate(entries, start=1):   # the same model first: the clearer
        if (other.source, other["model_id"], other["checkpoint"]["url"]) == (
                entry["source"], entry["model_id"], entry["checkpoint"]["url"]):
            return (f"{entry['source']} {entry['model_id']} with this checkpoint is already "
                    f"entry {other.name!r} (#{index})")
    for index, other in enumerate(entries, start=1):
        if other.name == entry["name"]:
            return (f"an entry named {entry['name']!r} exists (#{index}, {other.source} "
                    f"{other['model_id']}): pass --name")
    return None


def _models_last(text: str) -> bool:
    """True when `models:` is the file's last top-level key (so appending extends it)."""
    keys = [line.split(":", 1)[0] for line in text.splitlines()
            if line and not line[0].isspace() and not line.startswith(("#", "-"))]
    return bool(keys) and keys[-1] == "models"


def append(path: Path, entry: dict, comment: list[str]) -> str:
    """Add ENTRY to the manifest at PATH (created when missing); returns the text added.
    Raises ManifestError naming the manifest (and nothing is written) when it cannot."""
    path = Path(path)
    existed = path.exists()
    text = path.read_text() if existed else HEADER
    entries = load_manifest(path) if existed else []
    why = duplicate(entries, entry)
    if why:
        raise ManifestError(f"{path}: {why}")
    if not _models_last(text):
        raise ManifestError(f"{path}: `models:` is not the file's last top-level key; add the "
                            "entry by hand (pipeline.py add appends to the end of the file)")
    block = render(entry, comment, _item_indent(text))
    new = text + ("" if text.endswith("\n") else "\n") + block
    # Validated beside the manifest (a labels file is read relative to it), then swapped in.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(new)
        load_manifest(staged)
        os.replace(staged, path)
    except ManifestError as exc:
        raise ManifestError(str(exc).replace(staged, str(path))) from None
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return block


def provenance_comment(source: str, described: dict, derived: dict,
                       on: dt.date | None = None) -> list[str]:
    """The comment above an added entry: when (`on`, default today), and which package
    files the fields came from (so a reviewer can open them)."""
    versions = described.get("versions", {})
    version = versions.get(source) or versions.get("framework")
    about = [f"{source} {version}" if version else source]
    if described.get("family"):
        about.append(f"family {described['family']}")
    lines = [f"Added by `pipeline.py add {source} {described['model_id']}` on "
             f"{(on or dt.date.today()).isoformat()} ({'; '.join(about)})."]
    for key, origin in derived.get("fields", {}).items():
        lines.append(f"{key}: {origin}")
    lines += derived.get("notes", [])
    return lines
