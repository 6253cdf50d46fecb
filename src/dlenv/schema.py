"""matrix.schema.json: the JSON Schema of matrix.yaml, generated from the pydantic model in
config.py, so that editors (yaml-language-server) complete and check the keys. The committed file
is regenerated with `nox -s schema` (`python -m dlenv.schema`) and a test keeps it equal to this."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlenv import config

FILE = "matrix.schema.json"


def matrix_schema() -> dict:
    schema = config.MatrixModel.model_json_schema()
    # Keys that are names in matrix.yaml: the schema checks them as the model's validators do.
    properties = schema["properties"]
    properties["os"]["propertyNames"] = {"pattern": config.NAME.pattern}
    properties["cuda"]["propertyNames"] = {"pattern": config.CUDA_VERSION.pattern}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_one_line(schema), "title": "dlenv matrix.yaml"}


def _one_line(node):
    """Docstrings wrapped in the source read as one paragraph in an editor's hover."""
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "description" and isinstance(v, str) else _one_line(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node


def render() -> str:
    return json.dumps(matrix_schema(), indent=2) + "\n"


def write(path: Path) -> Path:
    path.write_text(render())
    return path


if __name__ == "__main__":
    print(f"wrote {write(Path(sys.argv[1] if len(sys.argv) > 1 else FILE))}")
