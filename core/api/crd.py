"""Generate CustomResourceDefinitions (structural OpenAPI v3 schemas) from the API models.

Pydantic's own JSON Schema uses $ref and anyOf-for-Optional, which structural CRD schemas forbid,
so this walks the models directly: descriptions, defaults, ranges, patterns, enums and the
``x-kubernetes-*`` extras all come from the model fields.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .models import CATEGORY, GROUP, RESOURCES, VERSION, KernelReplica, NotebookKernel


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _constraints(metadata: list[Any], schema: dict[str, Any]) -> None:
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            schema["minimum"] = m.ge
        elif isinstance(m, annotated_types.Le):
            schema["maximum"] = m.le
        elif isinstance(m, annotated_types.MinLen):
            schema["minItems" if schema.get("type") == "array" else "minLength"] = m.min_length
        elif isinstance(m, annotated_types.MaxLen):
            schema["maxItems" if schema.get("type") == "array" else "maxLength"] = m.max_length
        elif getattr(m, "pattern", None):
            schema["pattern"] = m.pattern
        elif isinstance(m, FieldInfo):
            _constraints(m.metadata, schema)
            extra = m.json_schema_extra
            if isinstance(extra, dict):
                schema.update(extra)


def type_schema(tp: Any) -> dict[str, Any]:
    """Structural schema of a Python type used in the models."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        schema = type_schema(base)
        _constraints(meta, schema)
        if schema.pop("x-kubernetes-int-or-string", False):
            schema.pop("type", None)
            schema["x-kubernetes-int-or-string"] = True
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return schema
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        return {"type": "string", "enum": values}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        _, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": type_schema(value)}
    if isinstance(tp, type):
        if issubclass(tp, BaseModel):
            return model_schema(tp)
        if issubclass(tp, Enum):
            return {"type": "string", "enum": [e.value for e in tp]}
        if issubclass(tp, bool):
            return {"type": "boolean"}
        if issubclass(tp, int):
            return {"type": "integer", "format": "int64"}
        if issubclass(tp, float):
            return {"type": "number"}
        if issubclass(tp, str):
            return {"type": "string"}
        if issubclass(tp, datetime):
            return {"type": "string", "format": "date-time"}
    raise TypeError(f"no CRD schema for type {tp!r}")


def _default(field: FieldInfo) -> Any:
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None or value is ... or value == []:
        return None
    if isinstance(value, BaseModel):
        return {}  # nested defaults are applied by the nested schema
    if isinstance(value, Enum):
        return value.value
    return value


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        schema = type_schema(field.annotation)
        _constraints(field.metadata, schema)
        extra = field.json_schema_extra
        if isinstance(extra, dict):
            for key, value in extra.items():
                if key == "x-kubernetes-validations":
                    schema.setdefault(key, []).extend(value)
                else:
                    schema[key] = value
        if schema.pop("x-kubernetes-int-or-string", False):
            schema.pop("type", None)
            schema["x-kubernetes-int-or-string"] = True
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if field.description:
            # The field's own description wins over the nested model's docstring.
            schema = {"description": field.description, **{k: v for k, v in schema.items() if k != "description"}}
        if field.is_required():
            required.append(alias)
        else:
            default = _default(field)
            if default is not None:
                schema["default"] = default
                if not isinstance(default, dict) and "description" in schema:
                    # `kubectl explain` prints descriptions, not schema defaults: say it in words too.
                    shown = default if isinstance(default, str) and default else json.dumps(default)
                    schema["description"] = f"{schema['description']} Default: {shown}."
        props[alias] = schema
    out: dict[str, Any] = {"type": "object"}
    doc = " ".join((model.__doc__ or "").split())
    if doc:
        out["description"] = doc
    out["properties"] = props
    if required:
        out["required"] = required
    return out


def _resource_schema(model: type[NotebookKernel] | type[KernelReplica]) -> dict[str, Any]:
    spec_field = model.model_fields["spec"]
    status_field = model.model_fields["status"]
    spec = type_schema(spec_field.annotation)
    status = type_schema(status_field.annotation)
    out: dict[str, Any] = {
        "type": "object",
        "description": " ".join((model.__doc__ or "").split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this representation."},
            "kind": {"type": "string", "description": "Kind of this resource."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    name_schema = getattr(model, "crd_metadata_name", None)
    if name_schema:
        out["properties"]["metadata"]["properties"] = {"name": dict(name_schema)}
    return out


def crd(model: type[NotebookKernel] | type[KernelReplica]) -> dict[str, Any]:
    kind = model.model_fields["kind"].default
    plural = model.crd_plural
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "notebookos"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(model.crd_short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(model.crd_printer_columns),
                    "schema": {"openAPIV3Schema": _resource_schema(model)},
                }
            ],
        },
    }


HEADER = "# Generated from core/api/models.py by `notebookos crds`. Do not edit by hand.\n"


def render(model: type[NotebookKernel] | type[KernelReplica]) -> str:
    return HEADER + yaml.safe_dump(crd(model), sort_keys=False, width=100)


def all_crds() -> dict[str, str]:
    """File name in crds/ -> YAML text."""
    return {f"{m.crd_plural}.yaml": render(m) for m in RESOURCES}
