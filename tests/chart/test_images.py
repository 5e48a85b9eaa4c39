"""Image names and tags come from one place, Chart.yaml (appVersion and the
notebookos.io/image-registry annotation): the chart's rendered images, `make images`'s tags
(images/names.sh), the operator's default kernel image and the package's version all agree."""

from __future__ import annotations

import subprocess
import tomllib
from typing import Any

import yaml

from notebookos.operator.config import DEFAULT_IMAGE

from .test_chart import ALL_ON, CHART, ROOT, container, render


def chart_meta() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def built_name(image: str) -> str:
    """The reference `make images` tags the image with."""
    out = subprocess.run(["bash", str(ROOT / "images" / "names.sh"), image], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def rendered_images(docs: list[dict[str, Any]]) -> dict[str, str]:
    op = container(docs, "Deployment", "notebookos-operator", "operator")
    kernel_env = next(e["value"] for e in op["env"] if e["name"] == "NOTEBOOKOS_KERNEL_IMAGE")
    return {
        "operator": op["image"],
        "kernel (operator's default)": kernel_env,
        "extender": container(docs, "Deployment", "notebookos-scheduler", "extender")["image"],
        "broker": container(docs, "Deployment", "notebookos-broker", "broker")["image"],
        "node agent": container(docs, "DaemonSet", "notebookos-node-agent", "node-agent")["image"],
    }


def test_names_come_from_chart_yaml(helm: str) -> None:
    meta = chart_meta()
    registry, tag = meta["annotations"]["notebookos.io/image-registry"], meta["appVersion"]
    control, kernel = f"{registry}/control:{tag}", f"{registry}/kernel:{tag}"
    assert (built_name("control"), built_name("kernel")) == (control, kernel)
    assert rendered_images(render(helm, *ALL_ON)) == {
        "operator": control,
        "kernel (operator's default)": kernel,
        "extender": control,
        "broker": control,
        "node agent": kernel,
    }
    # Outside the chart (`python -m notebookos.operator` with no --image) the same kernel image.
    assert kernel == DEFAULT_IMAGE
    # The image tagged X holds the package version X.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == tag


def test_values_name_no_image_of_this_repository() -> None:
    # A literal in values.yaml would be a second place to bump on a release.
    registry = chart_meta()["annotations"]["notebookos.io/image-registry"]
    assert registry not in (CHART / "values.yaml").read_text()


def test_registry_tag_and_one_component_overridden(helm: str) -> None:
    docs = render(
        helm,
        *("--set", "images.registry=registry.example.com/nb", "--set", "images.tag=1.2.3"),
        *("--set", "broker.image=registry.example.com/own/broker:7"),
    )
    control, kernel = "registry.example.com/nb/control:1.2.3", "registry.example.com/nb/kernel:1.2.3"
    assert rendered_images(docs) == {
        "operator": control,
        "kernel (operator's default)": kernel,
        "extender": control,
        "broker": "registry.example.com/own/broker:7",
        "node agent": kernel,
    }
