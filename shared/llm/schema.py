"""Checking a model's tool arguments against the tool's JSON Schema: the subset tools use.

Supported keywords: `type` (one or a list), `properties`, `required`, `additionalProperties`
(boolean or a schema), `items`, `enum`, `const`, `minLength`/`maxLength`, `minimum`/`maximum`,
`minItems`/`maxItems`. Other keywords are accepted in a schema and not enforced. `check_schema`
refuses, at registration, a schema this validator would misread. Errors are one line, with the
path of the offending value, meant for the model to read and correct.
"""

from __future__ import annotations

from typing import Any

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class SchemaError(ValueError):
    pass


def check_schema(schema: Any) -> None:
    """SchemaError unless `schema` is an object schema whose types this module knows."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise SchemaError("a tool's input_schema must be a JSON Schema of type 'object'")
    _check(schema, "input_schema")


def _check(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise SchemaError(f"{where} must be an object")
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in TYPES:
            raise SchemaError(f"{where}: unknown type {kind!r}")
    for name, sub in (schema.get("properties") or {}).items():
        _check(sub, f"{where}.properties.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _check(schema[key], f"{where}.{key}")


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, TYPES[kind])


def validate(schema: dict[str, Any], value: Any, path: str = "") -> str | None:
    """None when `value` satisfies `schema`, else the first problem found."""
    where = path or "arguments"
    kinds = schema.get("type")
    if kinds is not None:
        options = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is(value, k) for k in options):
            return f"{where}: {value!r} is not of type {' or '.join(map(repr, options))}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']!r}"
    if "const" in schema and value != schema["const"]:
        return f"{where}: {value!r} is not {schema['const']!r}"
    problem = _bounds(schema, value, where)
    if problem is not None:
        return problem
    if isinstance(value, dict):
        return _object(schema, value, path)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = validate(schema["items"], item, f"{path}/{i}" if path else str(i))
            if problem is not None:
                return problem
    return None


def _bounds(schema: dict[str, Any], value: Any, where: str) -> str | None:
    limits: list[tuple[str, Any, bool]] = []
    if isinstance(value, str):
        limits = [("minLength", len(value), True), ("maxLength", len(value), False)]
    elif isinstance(value, list):
        limits = [("minItems", len(value), True), ("maxItems", len(value), False)]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        limits = [("minimum", value, True), ("maximum", value, False)]
    for key, measured, is_min in limits:
        bound = schema.get(key)
        if bound is None:
            continue
        if (is_min and measured < bound) or (not is_min and measured > bound):
            return f"{where}: {value!r} breaks {key} {bound}"
    return None


def _object(schema: dict[str, Any], value: dict[str, Any], path: str) -> str | None:
    where = path or "arguments"
    for name in schema.get("required", []):
        if name not in value:
            return f"{where}: {name!r} is a required property"
    properties: dict[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        sub_path = f"{path}/{name}" if path else name
        if name in properties:
            problem = validate(properties[name], item, sub_path)
        elif extra is False:
            problem = f"{where}: unexpected property {name!r}"
        elif isinstance(extra, dict):
            problem = validate(extra, item, sub_path)
        else:
            problem = None
        if problem is not None:
            return problem
    return None
