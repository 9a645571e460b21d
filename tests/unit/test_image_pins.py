"""The image's pins agree with the project's: what the Containerfile installs is what the tests
ran against, and the manifest names the tag the build script gives the image."""
from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalised as pip does)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"unpinned requirement: {line}"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_image_requirements_pin_every_project_dependency_at_the_project_version():
    image = pins((DEPLOY / "image-requirements.txt").read_text().splitlines())
    project = pins(pyproject()["project"]["dependencies"])
    assert {name: image.get(name) for name in project} == project


def test_containerfile_pins_its_debian_packages_and_names_only_a_local_base():
    text = (DEPLOY / "Containerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["${BASE}"]
    assert re.search(r"^ARG BASE=calico-lite-base:bookworm$", text, re.M)
    install = re.search(r"apt-get install[^&]*", text).group(0)
    packages = [w for w in install.split() if not w.startswith("-") and w not in
                ("apt-get", "install", "\\")]
    assert packages and all("=" in p for p in packages), packages


def test_manifest_runs_the_image_tag_the_build_makes():
    tag = f"calico-lite:{pyproject()['project']['version']}"
    images = re.findall(r"^\s*image:\s*(\S+)", (DEPLOY / "calico-lite.yaml").read_text(), re.M)
    assert images and set(images) == {tag}
    assert all(yaml.safe_load_all((DEPLOY / "calico-lite.yaml").read_text()))
