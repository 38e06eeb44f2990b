"""Command-line flags from a pydantic config model: argparse arguments from its fields, the model from parsed args."""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from toolkit.core.errors import ToolkitError

Config = TypeVar("Config", bound=BaseModel)


@dataclass(frozen=True)
class Flag:
    """What a field's type does not tell argparse; attach it as `Annotated[T, Flag(...)]`.

    metavar: the value's name in --help (N, VAR, POINTS) instead of the upper-cased field name.
    split: a list field given as one comma-separated value (1,2,4) that the model's validator splits,
        instead of a flag repeated once per item.
    """

    metavar: str | None = None
    split: bool = False


def flag_name(field: str) -> str:
    """`max_new_tokens` → `--max-new-tokens`."""
    return "--" + field.replace("_", "-")


def _without_none(annotation: Any) -> Any:
    """`int | None` → `int`; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One `--flag` per field of `model`: its type, default, choices (a Literal) and help (the description).

    A field without a default is a required flag; a bool is a switch (off by default); a list is a
    flag repeated once per item unless its Flag says `split`.
    """
    for name, info in model.model_fields.items():
        if not info.description:
            raise TypeError(f"{model.__name__}.{name} has no description for its --help")
        flag = next((m for m in info.metadata if isinstance(m, Flag)), Flag())
        kind = _without_none(info.annotation)
        # argparse %-formats help strings (for %(default)s), so a literal % is doubled
        kwargs: dict[str, Any] = {"dest": name, "help": info.description.replace("%", "%%")}
        if info.is_required():
            kwargs["required"] = True
        else:
            kwargs["default"] = info.get_default(call_default_factory=True)
        if flag.metavar:
            kwargs["metavar"] = flag.metavar
        if kind is bool:
            if kwargs.get("default") is not False:
                raise TypeError(f"{model.__name__}.{name}: a switch must default to False")
            kwargs["action"] = "store_true"
        elif typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            kwargs.update(choices=list(choices), type=type(choices[0]))
        elif typing.get_origin(kind) is list and flag.split:
            kwargs["type"] = str
        elif typing.get_origin(kind) is list:
            kwargs.update(action="append", type=typing.get_args(kind)[0])
        else:
            kwargs["type"] = kind
        parser.add_argument(flag_name(name), **kwargs)


def from_args(model: type[Config], args: argparse.Namespace) -> Config:
    """The model from the parsed flags that `add_flags` made; an invalid value is one ToolkitError line."""
    try:
        return model(**{name: getattr(args, name) for name in model.model_fields})
    except ValidationError as exc:
        raise ToolkitError("; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: dict) -> str:
    """`--reps: input should be greater than or equal to 1, got 0`. A validator of ours raises a ValueError
    whose text reads on from the flag's name (`--threads wants N or a list like 1,2,4, got 'one'`)."""
    field = error["loc"][0] if error["loc"] else ""
    name = flag_name(str(field)) if field else "the flags"
    if error["type"] == "value_error":
        return f"{name} {error['ctx']['error']}"
    message = error["msg"]
    return f"{name}: {message[:1].lower()}{message[1:]}, got {error['input']!r}"


def thread_sweep(value: Any, example: str = "1,2,4") -> Any:
    """A thread count as `--threads` and a recipe give it (N, a list, or the text 1,2,4) as a list; "" is None (the
    default, as an absent flag); anything else is left for pydantic to judge."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        try:
            return [int(t) for t in value.split(",")] if value else None
        except ValueError:
            raise ValueError(f"wants N or a list like {example}, got {value!r}") from None
    return value
