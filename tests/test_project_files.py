"""The files a user reads before any code: the README's extras and dashboard command, the LICENSE."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_readme_names_every_extra_and_how_to_open_the_dashboard():
    readme = (ROOT / "README.md").read_text()
    for extra in PYPROJECT["project"]["optional-dependencies"]:
        assert f"`{extra}`" in readme, f"the README does not name the {extra!r} extra"
    assert "optuna-dashboard sqlite:///hpo.db" in readme


def test_the_license_is_the_mit_license_pyproject_declares_and_the_image_carries_it():
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and re.search(r"^Copyright \(c\) \d{4} \S", text, re.MULTILINE)
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    copied = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    assert any("LICENSE" in line.split() for line in copied)
    assert "!LICENSE" in (ROOT / ".dockerignore").read_text().splitlines()
