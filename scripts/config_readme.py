#!/usr/bin/env python3
"""Write config/README.md from workflow/schemas/config.schema.yaml: every key with its meaning, type, default and
allowed values. The schema is the one source; tests/test_workflow_style.py fails when the README is stale.
Usage: .venv/bin/python scripts/config_readme.py [--check]"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fgkd.config import CONFIG_HELP, TrainConfig  # noqa: E402

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
README = REPO / "config" / "README.md"
TRAIN_DEFAULTS = {f.name: f.default for f in TrainConfig.__dataclass_fields__.values()}
ENTRY_NAMES = {"datasets": "<dataset>", "variants": "<variant>", "backbone_train": "<backbone>", "stages": "<stage>"}
TRAIN_PLACES = ("train", "backbone_train.<backbone>", "datasets.<name>.train", "variants.<name>",
                "stages.<stage>")


def _inline(node, defs: dict):
    """The schema with each $ref to a definition other than train_options (documented once, apart) replaced by it."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/") and ref != "#/$defs/train_options":
        return _inline({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    return {key: _inline(value, defs) for key, value in node.items()}


def _type(node: dict) -> str:
    if "enum" in node:
        return "one of the allowed values"
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(dict.fromkeys(_type(option) for option in node[key]))
    kind = node.get("type", "object" if "properties" in node or "additionalProperties" in node else "")
    return " or ".join(kind) if isinstance(kind, list) else kind


def _allowed(node: dict) -> str:
    if "enum" in node:
        return ", ".join(f"`{v}`" for v in node["enum"])
    if "anyOf" in node:
        return ", or ".join(_allowed(option) for option in node["anyOf"])
    bounds = [f"{sign} {node[key]}" for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                       ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in node]
    if "pattern" in node:
        bounds.append(f"matches `{node['pattern']}`")
    if node.get("minLength"):
        bounds.append("not empty")
    if node.get("uniqueItems"):
        bounds.append("no repeats")
    if "items" in node and ("enum" in node["items"] or "anyOf" in node["items"]):
        bounds.append("each one of " + _allowed(node["items"]))
    return "; ".join(bounds)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _row(key: str, node: dict, default=None, meaning: str = "") -> str:
    shown = node.get("default", default)
    default_text = "required" if shown is None and node.get("_required") else ("" if shown is None else f"`{shown}`")
    return (f"| `{key}` | {_cell(meaning or node.get('description', ''))} | {_type(node)} | {_cell(default_text)} | "
            f"{_cell(_allowed(node))} |")


def _rows(prefix: str, node: dict, schema: dict) -> list[str]:
    """A row per key of an object node, recursing into nested objects (not into train options, documented once)."""
    rows = []
    required = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if child.get("$ref") == "#/$defs/train_options":
            rows.append(f"| `{path}` | options of `fgkd train` for every stage (see Training options) | object | | |")
            continue
        child = {**child, "_required": key in required}
        rows.append(_row(path, child))
        if "properties" in child:
            rows += _rows(f"{path}.", child, schema)
        extra = child.get("additionalProperties")
        if isinstance(extra, dict):
            name = ENTRY_NAMES[path]
            if extra.get("$ref") == "#/$defs/train_options":
                rows.append(f"| `{path}.{name}` | options of `fgkd train` for this {name[1:-1]} (see Training "
                            "options) | object | | |")
            else:
                rows += _rows(f"{path}.{name}.", extra, schema)
    return rows


def render() -> str:
    schema = yaml.safe_load(SCHEMA.read_text())
    schema = _inline(schema, schema["$defs"])
    header = "| key | meaning | type | default | allowed |\n|---|---|---|---|---|"
    train = schema["$defs"]["train_options"]["properties"]
    train_rows = [_row(key, node, TRAIN_DEFAULTS.get(key), node.get("description") or CONFIG_HELP.get(key, ""))
                  for key, node in train.items()]
    return "\n".join([
        "# Configuration",
        "",
        "<!-- Written by scripts/config_readme.py from workflow/schemas/config.schema.yaml; do not edit by hand. -->",
        "",
        "An experiment is one YAML file: `config/config.yaml` (the default, read only when no `--configfile` is",
        "given), `config/tiny.yaml` (a two-minute smoke test), `config/paper.yaml` (the paper's experiment) or",
        "`config/cub-small.yaml` (the method on CUB-200-2011 at a laptop's budget). Files after one `--configfile`",
        "are merged in order; `--config KEY=VALUE` overrides single keys. Snakemake checks",
        "the config against the schema before any job and stops with one line naming a wrong key.",
        "",
        "## Keys",
        "",
        header,
        *_rows("", schema, schema),
        "",
        "## Training options",
        "",
        "The options of `fgkd train` (`fgkd train --help`), allowed in " + ", ".join(f"`{p}`" for p in TRAIN_PLACES)
        + ", layered in that order for each network (a student takes its variant's options, the aux-KD baselines "
        "take `stages.auxkd`'s). A default here is `fgkd train`'s own.",
        "",
        header,
        *train_rows,
        "",
    ])


def main() -> int:
    text = render()
    if sys.argv[1:] == ["--check"]:
        if README.read_text() != text:
            print(f"{README.relative_to(REPO)} is stale: run scripts/config_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
