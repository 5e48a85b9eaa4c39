"""Validate a manifest against the generated CRD schema, offline, with the API server's wording.

The OpenAPI part goes through a JSON-schema validator, the CEL rules (``x-kubernetes-validations``)
through cel-python, and unknown fields are reported as the API server's strict field validation
reports them. Messages follow kube-apiserver's format so that the error a user sees from
``notebookos validate`` is the error ``kubectl apply`` would print.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from .crd import crd
from .models import API_VERSION, RESOURCES, parse_quantity

CEL_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_SCHEMAS: dict[str, dict[str, Any]] = {
    m.model_fields["kind"].default: crd(m)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for m in RESOURCES
}


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null"
    )


def _message(err: ValidationError) -> str:
    path = _path(err.absolute_path)
    v, val = err.validator, err.validator_value
    inst = err.instance
    if v == "required":
        missing = err.message.split("'")[1]
        return f"{_path([*err.absolute_path, missing])}: Required value"
    if v == "minimum":
        return f"{path}: Invalid value: {_show(inst)}: {path} in body should be greater than or equal to {val}"
    if v == "maximum":
        return f"{path}: Invalid value: {_show(inst)}: {path} in body should be less than or equal to {val}"
    if v == "pattern":
        return f"{path}: Invalid value: {_show(inst)}: {path} in body should match '{val}'"
    if v == "enum":
        supported = ", ".join(_show(x) for x in val)
        return f"{path}: Unsupported value: {_show(inst)}: supported values: {supported}"
    if v == "type":
        return (
            f'{path}: Invalid value: "{_type_name(inst)}": {path} in body must be of type {val}: "{_type_name(inst)}"'
        )
    if v == "maxLength":
        return f"{path}: Too long: may not be more than {val} bytes"
    if v == "minLength":
        return f"{path}: Invalid value: {_show(inst)}: {path} in body should be at least {val} chars long"
    if v == "maxItems":
        return f"{path}: Too many: {len(inst)}: must have at most {val} items"
    if v == "anyOf":
        return f"{path}: Invalid value: {_show(inst)}: {path} in body must be of type integer or string"
    return f"{path}: Invalid value: {_show(inst)}: {err.message}"


def _unknown_fields(obj: Any, schema: dict[str, Any], path: list[Any]) -> Iterator[str]:
    if path[:1] == ["metadata"]:
        return  # ObjectMeta's own schema applies there; the CRD only adds rules on the name
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            sub = schema["properties"].get(key)
            if sub is None:
                if path:  # metadata etc. at the top are not ours to judge
                    yield f'unknown field "{_path([*path, key])}"'
            else:
                yield from _unknown_fields(value, sub, [*path, key])
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            yield from _unknown_fields(item, schema["items"], [*path, i])


def _cel_functions() -> dict[str, Any]:
    """The part of Kubernetes' CEL quantity library the CRD rules use."""
    from celpy import celtypes

    def is_quantity(text: Any) -> Any:
        return celtypes.BoolType(parse_quantity(str(text)) is not None)

    def quantity(text: Any) -> Any:
        value = parse_quantity(str(text))
        if value is None:
            raise ValueError(f"invalid quantity {text!r}")
        return celtypes.StringType(str(value))  # carried as its decimal value

    def is_greater_than(a: Any, b: Any) -> Any:
        return celtypes.BoolType(Decimal(str(a)) > Decimal(str(b)))

    return {"isQuantity": is_quantity, "quantity": quantity, "isGreaterThan": is_greater_than}


def _cel(obj: Any, old: Any, schema: dict[str, Any], path: list[Any]) -> Iterator[str]:
    import celpy  # imported here: only validation needs it

    for rule in schema.get("x-kubernetes-validations", []):
        expr = rule["rule"]
        transition = "oldSelf" in expr
        if transition and old is None:
            continue  # transition rules apply to updates only, as in the API server
        env = celpy.Environment()
        activation = {"self": celpy.json_to_cel(obj)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = env.program(env.compile(expr), functions=_cel_functions()).evaluate(activation)
        except Exception:
            continue  # a value of the wrong type: its schema error is already reported
        if isinstance(result, Exception):
            continue  # cel-python returns some evaluation errors instead of raising them
        if not bool(result):
            where = _path(path)
            shown = f'"{_type_name(obj)}"' if isinstance(obj, dict | list) else _show(obj)
            yield f"{where}: Invalid value: {shown}: {rule.get('message', 'failed rule: ' + expr)}"
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                prev = old.get(key) if isinstance(old, dict) else None
                yield from _cel(obj[key], prev, sub, [*path, key])
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            yield from _cel(item, None, schema["items"], [*path, i])


def validate(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Errors the API server would report for creating (or, with `old`, updating) `manifest`."""
    if manifest.get("apiVersion") != API_VERSION:
        return [
            f'apiVersion: Unsupported value: {_show(manifest.get("apiVersion"))}: supported values: "{API_VERSION}"'
        ]
    kind = manifest.get("kind")
    schema = _SCHEMAS.get(kind or "")
    if schema is None:
        return [f"kind: Unsupported value: {_show(kind)}: supported values: {', '.join(map(_show, _SCHEMAS))}"]
    body = {k: v for k, v in manifest.items() if k != "status"}  # status goes through its subresource
    errors = list(_unknown_fields(body, schema, []))
    found = sorted(Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    errors += [_message(e) for e in found]
    # The API server evaluates the CEL rules beside range and pattern errors and reports them all at
    # once; a wrong type or a missing field stops it, and it says so.
    if any(e.validator in ("type", "required", "anyOf") for e in found):
        errors.append(f"<nil>: Invalid value: null: {CEL_SKIPPED}")
    else:
        errors += list(_cel(body, old, schema, []))
    return errors
