"""pydantic's validation errors as a person reads them: `field: problem`, without the library's
regexes and documentation URLs."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from .models import DNS_LABEL_PATTERN, DURATION_PATTERN, QUANTITY_PATTERN

# What each pattern of the API models means, in words.
PATTERN_HINTS = {
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 4Gi, 500m or 2",
    DURATION_PATTERN: "must be a Go duration such as 1h30m or 90s",
    DNS_LABEL_PATTERN: "must hold only a-z, 0-9 and '-', starting and ending with a letter or digit",
    r"^[a-z][a-z0-9+.-]*://.+$": "must be a URL such as s3://bucket/prefix or file:///mnt/shared",
}


def describe_validation_error(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """All of the errors on one line; `names` maps a field path (e.g. `gpus`, `storage.url`) to the
    name the user typed (e.g. `--gpus`)."""
    parts = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        shown = (names or {}).get(path, path or "value")
        ctx = err.get("ctx") or {}
        if err["type"] == "string_pattern_mismatch":
            problem = PATTERN_HINTS.get(str(ctx.get("pattern")), "has the wrong form")
        elif err["type"] == "value_error":
            problem = str(ctx.get("error") or err["msg"])
        else:
            problem = err["msg"][:1].lower() + err["msg"][1:]
        value = err.get("input")
        got = f" (got {value!r})" if isinstance(value, str | int | float) and err["type"] != "missing" else ""
        parts.append(f"{shown}: {problem}{got}")
    return "; ".join(parts)
