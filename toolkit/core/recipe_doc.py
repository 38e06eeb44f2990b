"""The recipe reference, generated from the schema: docs/recipe.md and `toolkit recipe explain FIELD`."""
from __future__ import annotations

import difflib
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from toolkit.core.errors import RecipeError
from toolkit.core.recipe import LATE_FIELDS, DeployBenchConfig, Recipe

# Not a recipe author's: base_dir is set by load_recipe; deploy.bench.remote exists only to refuse itself.
INTERNAL = {(Recipe, "base_dir"), (DeployBenchConfig, "remote")}


@dataclass(frozen=True)
class FieldDoc:
    """One recipe field: its dotted path, the section class that holds it, and its schema entry."""

    path: str
    owner: type[BaseModel]
    name: str
    info: FieldInfo

    @property
    def section(self) -> type[BaseModel] | None:
        """The section class this field opens (a sub-mapping or a list of them), else None."""
        return _model_in(self.info.annotation)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[FieldDoc]:
    """Every field of `model` and of the sections under it, depth first in schema order (a list of sections,
    such as deploy.formats, documents its items' fields as deploy.formats.format)."""
    out = []
    for name, info in model.model_fields.items():
        if (model, name) in INTERNAL:
            continue
        doc = FieldDoc(f"{prefix}{name}", model, name, info)
        out.append(doc)
        if doc.section is not None:
            out.extend(fields(doc.section, f"{doc.path}."))
    return out


def type_text(annotation: Any) -> str:
    """`int | None` → `int or null`, `Literal['a', 'b']` → `'a' or 'b'`, `list[str]` → `list of str`."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {type_text(typing.get_args(annotation)[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section ({annotation.__name__})"
    return {int: "integer", float: "number", str: "text", bool: "true or false"}.get(annotation, str(annotation))


def bounds_text(info: FieldInfo) -> str:
    """The field's constraints: `≥ 1`, `> 0`, `≤ 2`, `at least 1 item`, `matches ^…$`."""
    parts = []
    for m in info.metadata:
        for cls, attr, sign in ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"),
                                (annotated_types.Le, "le", "≤"), (annotated_types.Lt, "lt", "<")):
            if isinstance(m, cls):
                parts.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, annotated_types.MinLen):
            parts.append(f"at least {m.min_length} item{'s' if m.min_length != 1 else ''}")
        if getattr(m, "pattern", None):
            parts.append(f"matches `{m.pattern}`")
    return ", ".join(parts)


def _kind(info: FieldInfo) -> str:
    bounds = bounds_text(info)
    return type_text(info.annotation) + (f", {bounds}" if bounds else "")


def default_text(info: FieldInfo) -> str:
    """The default as a recipe would write it; `required` when there is none."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _notes(doc: FieldDoc) -> list[str]:
    notes = []
    section = doc.path.rpartition(".")[0]
    if (section, doc.name) in LATE_FIELDS:
        notes.append("at its default it is left out of the run's digest, so runs made before it existed resume")
    if doc.info.exclude:
        notes.append("not part of the run's digest: changing it resumes a finished run")
    return notes


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown() -> str:
    """docs/recipe.md: one table per section, every field with its type, constraints, default and meaning."""
    lines = ["# Recipe reference", "",
             "Generated from `toolkit/core/recipe.py` by `toolkit recipe doc > docs/recipe.md` (a test fails when "
             "this file is out of date). `toolkit recipe explain FIELD` prints one entry in the terminal. Unknown "
             "keys, wrong types and values outside the bounds stop a run with one line naming the key and its line "
             "in the file; `key.path=value` on the command line overrides a field.", ""]
    sections: list[tuple[str, type[BaseModel], list[FieldDoc]]] = [("(top level)", Recipe, [])]
    for doc in fields():
        if doc.section is not None:
            sections.append((doc.path, doc.section, []))
    by_path = {path: rows for path, _, rows in sections}
    for doc in fields():
        by_path[doc.path.rpartition(".")[0] or "(top level)"].append(doc)
    for path, model, rows in sections:
        title = path if path == "(top level)" else f"`{path}`"
        lines += [f"## {title}", "", " ".join((model.__doc__ or "").split()), "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        for doc in rows:
            meaning = " ".join([doc.info.description or "", *(f"({n})" for n in _notes(doc))])
            lines.append(f"| `{doc.name}` | {_cell(_kind(doc.info))} | "
                         f"{_cell(default_text(doc.info))} | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines)


def _lookup(path: str) -> FieldDoc:
    known = {doc.path: doc for doc in fields()}
    if path in known:
        return known[path]
    close = difflib.get_close_matches(path, list(known), n=3, cutoff=0.6)
    if not close:  # a bare field name from any section: max_accuracy_drop → deploy.max_accuracy_drop
        last = path.rpartition(".")[2]
        close = [p for p in known if p.rpartition(".")[2] == last][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; `toolkit recipe explain` lists the sections"
    raise RecipeError(f"no recipe field {path!r}{hint}")


def explain(path: str | None = None) -> str:
    """A field's meaning (with its unit), type, constraints and default; for a section, also its fields."""
    if not path:
        model, head = Recipe, ["A recipe: one YAML file of these keys and sections.", " ".join(Recipe.__doc__.split())]
        prefix = ""
    else:
        doc = _lookup(path)
        head = [f"{doc.path}  ({doc.owner.__name__}.{doc.name})", *_wrap(doc.info.description or ""),
                f"  type:    {_kind(doc.info)}",
                f"  default: {default_text(doc.info)}", *(f"  note:    {n}" for n in _notes(doc))]
        model, prefix = doc.section, f"{doc.path}."
        if model is None:
            return "\n".join(head)
        head += _wrap(model.__doc__ or "")
    width = max(len(name) for name in model.model_fields)
    rows = [f"  {d.path.removeprefix(prefix):<{width}}  {_kind(d.info)}; default {default_text(d.info)}"
            for d in fields(model, prefix) if d.owner is model]
    return "\n".join([*head, "fields:", *rows, f"`toolkit recipe explain {prefix}FIELD` explains one."])


def _wrap(text: str, width: int = 100) -> list[str]:
    """The description as indented lines of at most `width` characters."""
    return textwrap.wrap(" ".join(text.split()), width, initial_indent="  ", subsequent_indent="  ")
