"""The API: models, generated CRDs and examples agree; invalid examples fail as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from notebookos.api import KernelReplica, NotebookKernel
from notebookos.api.crd import all_crds, crd, model_schema, type_schema
from notebookos.api.models import RESOURCES
from notebookos.api.validate import validate

ROOT = Path(__file__).resolve().parents[1]
VALID = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def test_examples_exist() -> None:
    assert {p.name for p in VALID} >= {"minimal.yaml", "full.yaml"}
    assert len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_passes_schema_and_model(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert validate(doc) == []
    model = {"NotebookKernel": NotebookKernel, "KernelReplica": KernelReplica}[doc["kind"]]
    parsed = model.model_validate(doc)
    assert parsed.metadata.name == doc["metadata"]["name"]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_fails_with_documented_message(path: Path) -> None:
    errors = validate(yaml.safe_load(path.read_text()))
    want = expected_error(path)
    assert any(want in e for e in errors), f"{path.name}: wanted {want!r} in {errors}"


def test_invalid_examples_are_documented() -> None:
    table = (ROOT / "examples" / "invalid" / "README.md").read_text()
    for path in INVALID:
        assert path.name in table


def test_committed_crds_match_models() -> None:
    # The repository's crds/ and the Helm chart's copy (Helm installs charts/notebookos/crds/).
    for folder in ("crds", "charts/notebookos/crds"):
        for name, text in all_crds().items():
            committed = (ROOT / folder / name).read_text()
            assert committed == text, f"{folder}/{name} drifted from core/api/models.py: run `make crds`"


def test_drift_is_detected() -> None:
    """A field added to a model changes the generated schema, so the check above would fail."""

    class Spec(BaseModel):
        gpus: int = Field(1, ge=0, description="GPUs")

    class SpecPlus(Spec):
        extra: int = Field(0, description="new")

    assert model_schema(Spec) != model_schema(SpecPlus)


def _walk(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    props = schema["properties"]
    aliases = {f.alias or n: (n, f) for n, f in model.model_fields.items()}
    assert set(props) == set(aliases), f"{where}: CRD has {sorted(props)}, model has {sorted(aliases)}"
    for alias, (_, field) in aliases.items():
        sub = props[alias]
        assert sub.get("description"), f"{where}.{alias} has no description"
        assert (alias in schema.get("required", [])) == field.is_required(), f"{where}.{alias} required"
        nested = type_schema(field.annotation)
        if nested.get("type") == "object" and "properties" in nested:
            inner = field.annotation
            for cand in getattr(inner, "__args__", (inner,)):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    _walk(cand, sub, f"{where}.{alias}")
        if nested.get("type") == "array" and "properties" in nested.get("items", {}):
            (item,) = field.annotation.__args__  # type: ignore[union-attr]
            _walk(item, sub["items"], f"{where}.{alias}[]")


@pytest.mark.parametrize("model", RESOURCES, ids=lambda m: m.__name__)
def test_model_and_crd_agree_field_by_field(model: type[NotebookKernel] | type[KernelReplica]) -> None:
    schema = crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    for part in ("spec", "status"):
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type)
        _walk(annotation, schema[part], part)


def test_crd_defaults_are_model_defaults() -> None:
    spec = crd(NotebookKernel)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model = NotebookKernel.model_validate({"metadata": {"name": "x"}, "spec": {}})
    assert spec["properties"]["replicas"]["default"] == model.spec.replicas == 3
    assert spec["properties"]["resources"]["properties"]["gpus"]["default"] == model.spec.resources.gpus


def test_crd_printer_columns_and_names() -> None:
    spec = crd(NotebookKernel)["spec"]
    assert spec["names"]["categories"] == ["notebookos"]
    assert spec["names"]["shortNames"] == ["nbk"]
    cols = [c["name"] for c in spec["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Phase", "Ready", "Executor", "GPUs/Cell", "Cells", "GPU-Seconds", "Age"]
    assert spec["versions"][0]["subresources"] == {"status": {}}
    replica_cols = {c["name"]: c for c in crd(KernelReplica)["spec"]["versions"][0]["additionalPrinterColumns"]}
    # A count a person can read, not the JSON list of device UUIDs.
    assert replica_cols["Bound-GPUs"]["jsonPath"] == ".status.gpuBinding.gpus"


def test_crd_descriptions_say_the_defaults() -> None:
    spec = crd(NotebookKernel)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["replicas"]["description"].endswith("Default: 3.")
    assert spec["properties"]["resources"]["properties"]["memory"]["description"].endswith("Default: 4Gi.")


def test_validate_reports_every_error_at_once() -> None:
    doc = {"apiVersion": "notebookos.io/v1alpha1", "kind": "NotebookKernel", "metadata": {"name": "k"}}
    doc["spec"] = {"replicas": 2, "resources": {"gpus": -1, "memory": 0, "cpu": "0", "gpuMemory": "-1Gi"}}
    errors = validate(doc)
    assert len(errors) == 5, errors
    for field in ("spec.replicas", "spec.resources.gpus", "spec.resources.memory", "spec.resources.cpu"):
        assert any(e.startswith(f"{field}: ") for e in errors), (field, errors)
    assert any(e.startswith("spec.resources.gpuMemory: ") for e in errors)


@pytest.mark.parametrize(
    ("text", "value"),
    [("4Gi", 4 * 2**30), ("500m", 0.5), ("1.5", 1.5), ("2k", 2000), ("1e3", 1000), ("-1Gi", -(2**30)), ("0", 0)],
)
def test_quantities_parse_as_kubernetes_does(text: str, value: float) -> None:
    from notebookos.api.models import parse_quantity

    assert float(parse_quantity(text) or 0) == value
    assert parse_quantity("lots") is None


def test_models_refuse_zero_and_negative_quantities() -> None:
    from pydantic import ValidationError

    for resources in ({"memory": 0}, {"cpu": "0"}, {"gpuMemory": "-1Gi"}):
        with pytest.raises(ValidationError, match="must be greater than 0"):
            NotebookKernel.model_validate({"spec": {"resources": resources}})


def test_immutable_fields_refuse_updates() -> None:
    old = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    old["spec"] = {"replicas": 3}
    new = {**old, "spec": {"replicas": 5}}
    assert any("replicas is immutable" in e for e in validate(new, old=old))
    assert validate(old, old=old) == []


def test_quantities_accept_numbers() -> None:
    k = NotebookKernel.model_validate({"spec": {"resources": {"cpu": 2, "memory": "8Gi"}}})
    assert k.spec.resources.cpu == "2"


def test_stdlib_operator_not_shadowed() -> None:
    """From the repository root, `import operator` must still be the standard library's."""
    code = "import operator, notebookos.operator; assert operator.__file__.endswith('operator.py'), operator.__file__"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_cli_check_reports_drift(tmp_path: Path) -> None:
    from notebookos.cli import main

    assert main(["crds", "--out", str(tmp_path)]) == 0
    assert main(["crds", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "notebookkernels.yaml").write_text("stale\n")
    assert main(["crds", "--out", str(tmp_path), "--check"]) == 1


def test_cli_checks_every_out_folder(tmp_path: Path) -> None:
    """`--out` repeats (crds/ and the chart's copy): a stale second folder fails the check."""
    from notebookos.cli import main

    first, second = tmp_path / "crds", tmp_path / "chart"
    assert main(["crds", "--out", str(first), "--out", str(second)]) == 0
    assert main(["crds", "--out", str(first), "--out", str(second), "--check"]) == 0
    (second / "kernelreplicas.yaml").write_text("stale\n")
    assert main(["crds", "--out", str(first), "--out", str(second), "--check"]) == 1


def test_models_refuse_even_replicas_with_the_crd_message() -> None:
    from pydantic import ValidationError

    from notebookos.api.models import ODD_REPLICAS

    with pytest.raises(ValidationError, match=ODD_REPLICAS):
        NotebookKernel.model_validate({"spec": {"replicas": 4}})
