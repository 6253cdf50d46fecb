"""matrix.schema.json: generated from the model, committed, and true to every matrix we have."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from dlenv import schema
from helpers import REPO, SMALL

MATRICES = [REPO / "matrix.yaml", *sorted((REPO / "tests").glob("*.yaml"))]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    committed = json.loads((REPO / schema.FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(committed)
    return jsonschema.Draft202012Validator(committed)


def test_the_committed_schema_is_the_generated_one():
    assert (REPO / schema.FILE).read_text() == schema.render(), "run `nox -s schema` and commit matrix.schema.json"


def test_matrix_yaml_names_the_schema_for_editors():
    first = (REPO / "matrix.yaml").read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=./{schema.FILE}"


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_matrix_validates(validator, path):
    assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == []


def test_the_tests_small_matrix_validates(validator):
    assert [e.message for e in validator.iter_errors(yaml.safe_load(SMALL))] == []


@pytest.mark.parametrize("where", ["top", "os", "cuda", "build"])
def test_an_unknown_key_fails(validator, where):
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    node = {"top": data, "os": next(iter(data["os"].values())), "cuda": next(iter(data["cuda"].values())),
            "build": data.setdefault("build", {})}[where]
    node["registy"] = "x"
    errors = [e.message for e in validator.iter_errors(data)]
    assert errors == ["Additional properties are not allowed ('registy' was unexpected)"]


@pytest.mark.parametrize("key, name", [("cuda", "12.8"), ("os", "Debian")])
def test_a_badly_named_os_or_cuda_fails(validator, key, name):
    data = yaml.safe_load(SMALL)
    data[key] = {name: next(iter(data[key].values()))}
    assert [(list(e.path), e.validator) for e in validator.iter_errors(data)] == [([key], "pattern")]


def test_fields_carry_their_descriptions():
    generated = schema.matrix_schema()
    assert generated["title"] == "dlenv matrix.yaml"
    assert all(prop.get("description") or "$ref" in prop for prop in generated["properties"].values())
