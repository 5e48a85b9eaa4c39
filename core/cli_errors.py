"""What the `notebookos` command prints when something goes wrong: one line naming the problem, exit
status 2, no traceback. Commands raise ``CliError`` for their own problems; the exceptions of the
libraries they use (files, YAML, kubeconfig, API server, pydantic) are turned into a sentence here,
in one place. ``NOTEBOOKOS_DEBUG=1`` shows the traceback instead, for bug reports."""

from __future__ import annotations

import json
from typing import Any

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix, in one line."""


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or "").strip()


def yaml_problem(exc: Any) -> str:
    """A YAML parse error in one line, with where it is."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(exc, "problem", None) or str(exc).splitlines()[0])


def describe(exc: BaseException) -> str | None:
    """One line for a known kind of failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file"
    if isinstance(exc, IsADirectoryError | PermissionError):
        return f"{exc.filename}: {exc.strerror.lower() if exc.strerror else exc}"
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            return f"not valid YAML: {yaml_problem(exc)}"
    except ImportError:
        pass
    try:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            from notebookos.api.errors import describe_validation_error

            return describe_validation_error(exc)
    except ImportError:
        pass
    try:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
        from urllib3.exceptions import HTTPError

        if isinstance(exc, ConfigException):
            return f"no usable kubeconfig ({exc}); set KUBECONFIG or pass --kubeconfig"
        if isinstance(exc, ApiException):
            return f"the API server answered {exc.status}: {_api_message(exc)}"
        if isinstance(exc, HTTPError):
            reason = getattr(exc, "reason", None) or exc
            return f"cannot reach the API server: {reason}"
    except ImportError:
        pass
    return None
