"""Tools' JSON Schemas, over the `jsonschema` library: a schema is checked once, when its tool is
registered, against its draft's meta-schema (the draft its `$schema` names, else 2020-12, the one
the Messages API documents for `input_schema`), and must describe an object; a model's arguments
are then checked against it before the tool runs.

Problems are one line with the path of the offending value (`city: 5 is not of type 'string'`,
`arguments: 'city' is a required property`), meant for the model to read and correct. Formats are
annotations only, as the draft says; remote `$ref`s are not fetched.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError as _MetaSchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

MAX_PROBLEM_CHARS = 500

# A compiled schema: `jsonschema`'s validator protocol (the library ships no type hints).
Validator = Any


class SchemaError(ValueError):
    """A tool's input_schema that is not a valid JSON Schema of an object."""


def compile_schema(schema: Any) -> Validator:
    """The validator for a tool's input_schema; SchemaError unless it is a valid JSON Schema
    whose instances are objects."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise SchemaError("a tool's input_schema must be a JSON Schema of type 'object'")
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except _MetaSchemaError as exc:
        where = str(exc.json_path).replace("$", "input_schema", 1)
        raise SchemaError(f"{where}: {exc.message}"[:MAX_PROBLEM_CHARS]) from None
    return cls(schema)


def problem(validator: Validator, value: Any) -> str | None:
    """None when `value` satisfies the schema, else the most relevant problem."""
    try:
        error = best_match(validator.iter_errors(value))
    except Exception:  # e.g. a $ref that cannot be resolved: the schema's fault, not the model's
        return "the arguments could not be checked: the tool's schema cannot be applied"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "arguments"
    return f"{where}: {error.message}"[:MAX_PROBLEM_CHARS]
