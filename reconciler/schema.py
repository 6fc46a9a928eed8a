"""The JSON Schema of the desired-state spec, generated from the pydantic models."""

from __future__ import annotations

import json

from reconciler.spec import UpdatePolicy

SCHEMA_ID = "https://kruxos.io/schemas/updatepolicy-v1.json"


def schema_text() -> str:
    """The schema as committed under ``specs/updatepolicy.schema.json``."""
    schema = UpdatePolicy.model_json_schema(by_alias=True, mode="validation")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
              **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
