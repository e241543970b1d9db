"""Load and validate a manifest file.

Every problem is reported as one line naming the file, the entry and the field, e.g.

    manifests/all.yaml: entry 'res2net50-w14-s8' (#1): field 'checkpoint.sha256': ...
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from deploy.labels import IMAGENET1K, read_label_file, resolve
from manifests.bounded import DocumentTooLarge, load_yaml, read_bounded
from manifests.schema import DEFAULTS, ENTRY, MANIFEST, RESIZE_FORMS, SOURCE_DEFAULTS, SOURCES


class ManifestError(ValueError):
    """The manifest cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class Entry:
    """One validated manifest entry, defaults filled in. Fields the manifest leaves to the
    source (preprocess, input_shape, published: manifests/schema.py DERIVED) are filled in
    by orchestrator/derive.py before any stage needs them; `declared` then keeps the entry
    as the manifest wrote it (what the run's fingerprint covers)."""

    data: dict
    file: str
    declared: dict | None = None

    @property
    def as_written(self) -> dict:
        return self.declared if self.declared is not None else self.data

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def source(self) -> str:
        return self.data["source"]

    def __getitem__(self, key):
        return self.data[key]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merges first
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _problems(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(field, what is wrong) for one schema error: one pair per unknown or missing key, so
    a manifest with three misspelt keys hears of all three at once."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        # Every schema with additionalProperties: false lists its properties (schema.py).
        extra = sorted(set(error.instance) - set(error.schema["properties"]))
        return [(".".join(parts + [key]), "unknown key (not in the schema: check its spelling)")
                for key in extra]
    if error.validator == "required":
        # jsonschema raises this once per missing key, each error with the whole list:
        # _lines drops the repeats.
        return [(".".join(parts + [key]), "missing (required)")
                for key in error.validator_value if key not in error.instance]
    # Any other rule is about a value, which has a path: the loader refuses a top level or
    # an entry that is not a mapping before the schema sees it.
    return [(".".join(parts), _message(error))]


def _lines(where: str, errors) -> list[str]:
    """One line per problem, each once (jsonschema repeats a `required` list per missing key)."""
    return list(dict.fromkeys(f"{where}: field '{field}': {what}"
                              for error in errors for field, what in _problems(error)))


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "oneOf" and "sha256" in str(error.schema):
        return ("give exactly one of sha256, sha256_prefix, or digest_unpublished: true "
                "(when the publisher gives no digest)")
    return error.message


def _merge(default, given):
    """Defaults filled in at every level of nested blocks (variants.int8.calibration alone
    keeps the other int8 defaults)."""
    if isinstance(default, dict) and isinstance(given, dict):
        return {k: _merge(default.get(k), given[k]) if k in given else copy.deepcopy(default[k])
                for k in {**default, **given}}
    return copy.deepcopy(given if given is not None else default)


def _merge_defaults(entry: dict) -> dict:
    merged = copy.deepcopy(entry)
    for key, default in DEFAULTS.items():
        default = _merge(default, SOURCE_DEFAULTS.get(entry["source"], {}).get(key))
        merged[key] = _merge(default, merged.get(key))
    if "preprocess" in merged and "input_shape" not in merged:
        crop = merged["preprocess"]["crop"]   # the model sees what the crop leaves
        merged["input_shape"] = [3, crop, crop]
    return merged


def _labels(raw: dict, path: Path, where: str, problems: list[str]):
    """The entry's `labels` as 'imagenet-1k' or a list of num_classes names (a file is read
    here, relative to the manifest, so the entry carries its names wherever it runs)."""
    given = raw.get("labels")
    if given is None:
        return None
    try:
        if isinstance(given, str) and given != IMAGENET1K:
            given = read_label_file(path.parent / given)
        resolve(given, raw["num_classes"])
    except (OSError, ValueError) as exc:
        problems.append(f"{where}: field 'labels': {exc}")
        return None
    return given


def _resize_form(pre: dict, where: str) -> list[str]:
    """A preprocess block names exactly one resize form, one its pipeline's source has."""
    given = [k for k in RESIZE_FORMS if k in pre]
    if len(given) != 1:
        return [f"{where}: field 'preprocess': give exactly one of "
                f"{', '.join(RESIZE_FORMS)} (found {', '.join(given) or 'none'})"]
    sources = RESIZE_FORMS[given[0]]
    if pre.get("pipeline") in SOURCES and pre["pipeline"] not in sources:
        return [f"{where}: field 'preprocess.{given[0]}': {pre['pipeline']}'s eval transforms "
                f"have no such resize (only {', '.join(sources)})"]
    return []


def load_manifest(path: str | Path) -> list[Entry]:
    """Read, validate and default-fill a manifest. Raises ManifestError."""
    path = Path(path)
    label = str(path)
    try:
        text = read_bounded(path)   # its label is str(path)
        # Composed and measured before anything is expanded (manifests/bounded.py).
        doc = load_yaml(text, label, _UniqueKeyLoader)
    except OSError as exc:
        raise ManifestError(f"{label}: cannot read manifest: {exc.strerror or exc}") from exc
    except (DocumentTooLarge, UnicodeDecodeError) as exc:
        raise ManifestError(str(exc) if isinstance(exc, DocumentTooLarge)
                            else f"{label}: not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{label}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{label}: the top level must be a mapping with a 'models' list")

    problems = _lines(label, jsonschema.Draft202012Validator(MANIFEST).iter_errors(doc))
    if problems:
        raise ManifestError("\n".join(problems))

    validator = jsonschema.Draft202012Validator(ENTRY)
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(doc["models"], start=1):
        name = raw.get("name") if isinstance(raw, dict) else None
        where = f"{label}: entry {name!r} (#{index})" if name else f"{label}: entry #{index}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping, got {type(raw).__name__}")
            continue
        errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
        problems += _lines(where, errors)
        if name in seen:
            problems.append(f"{where}: field 'name': duplicate of entry #{seen[name]}")
        elif name:
            seen[name] = index
        pre = raw.get("preprocess")
        if isinstance(pre, dict) and raw.get("source") and pre.get("pipeline") not in (
                None, raw.get("source")):
            problems.append(f"{where}: field 'preprocess.pipeline': {pre.get('pipeline')!r} "
                            f"differs from source {raw.get('source')!r}; each source "
                            "preprocesses with its own transform code")
        if isinstance(pre, dict):
            problems += _resize_form(pre, where)
        deploy = raw.get("deploy") if isinstance(raw.get("deploy"), dict) else {}
        extra = sorted(set(deploy.get("required_runtimes", []))
                       - set(deploy.get("runtimes", DEFAULTS["deploy"]["runtimes"])))
        if extra and not errors:
            problems.append(f"{where}: field 'deploy.required_runtimes': {extra} not in "
                            "deploy.runtimes (a required runtime must be checked)")
        labels = _labels(raw, path, where, problems) if not errors else None
        if not errors:
            entry = _merge_defaults(raw)
            if labels is not None:
                entry["labels"] = labels
            entries.append(Entry(entry, label))
    if problems:
        raise ManifestError("\n".join(problems))
    return entries


def select(entries: list[Entry], only: tuple[str, ...] | list[str]) -> list[Entry]:
    """Entries named in `only` (all if empty); an unknown name is an error naming it."""
    if not only:
        return list(entries)
    by_name = {e.name: e for e in entries}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ManifestError(
            f"unknown entry {', '.join(map(repr, unknown))}; known: {', '.join(by_name)}")
    return [by_name[n] for n in dict.fromkeys(only)]
