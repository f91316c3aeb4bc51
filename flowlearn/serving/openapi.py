"""The OpenAPI 3 description of the predictor's HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json({"$ref": "#/components/schemas/Error"}, "error, with a message naming the field")
_NOT_FOUND = _json(
    {"$ref": "#/components/schemas/Error"},
    "no such model: never known here, or deleted (the message says which)",
)
_MODEL_PARAM = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "flowlearn predictor",
        "version": "1",
        "description": "KServe V1 style predictions from models followed in Redis.",
    },
    "paths": {
        "/v1/models": {
            "get": {
                "summary": "Models known to this predictor",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "models": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Model"},
                                }
                            },
                        },
                        "the models",
                    )
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "One model: served version, epoch, age, spec and state",
                "parameters": [_MODEL_PARAM],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Model"}, "the model"),
                    "404": _NOT_FOUND,
                },
            }
        },
        "/v1/models/{model}:predict": {
            "post": {
                "summary": "Score instances with the served version",
                "parameters": [_MODEL_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PredictRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/PredictResponse"}, "predictions"),
                    "400": _ERROR,
                    "404": _NOT_FOUND,
                    "413": _ERROR,
                    "503": _json(
                        {"$ref": "#/components/schemas/Error"},
                        "the model is known but no weights are loaded yet",
                    ),
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {
            "get": {
                "summary": "Ready once the models set was read and every model is loaded",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition"}},
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Features": {
                "description": "A dense list of n_features numbers (null: missing), or a "
                "{name: value} map: of the model's feature_names for a dense model (numbers, "
                "booleans, null), of any names for a hashed model (numbers, strings, null)",
                "oneOf": [
                    # null: a missing value, which the model's pipeline fills
                    {"type": "array", "items": {"type": "number", "nullable": True}},
                    # null: the feature is absent
                    {
                        "type": "object",
                        "additionalProperties": {
                            "oneOf": [
                                {"type": "number", "nullable": True},
                                {"type": "string"},
                                {"type": "boolean"},
                            ]
                        },
                    },
                ],
            },
            "Instance": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Features"},
                    {
                        "type": "object",
                        "required": ["features"],
                        "properties": {
                            "features": {"$ref": "#/components/schemas/Features"},
                            "event_id": {"type": "string"},
                        },
                    },
                ]
            },
            "PredictRequest": {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/Instance"},
                    }
                },
            },
            "PredictResponse": {
                "type": "object",
                "required": ["predictions", "model_version", "epoch", "variant"],
                "properties": {
                    "predictions": {
                        "type": "array",
                        "description": (
                            "logistic: probability of class 1; softmax: class "
                            "probabilities in spec order; linear: the predicted value"
                        ),
                        "items": {
                            "oneOf": [
                                {"type": "number"},
                                {"type": "array", "items": {"type": "number"}},
                            ]
                        },
                    },
                    "labels": {
                        "type": "array",
                        "description": "the predicted class by name, for a classifier whose "
                        "spec names its classes (class_names)",
                        "items": {"type": "string"},
                    },
                    "model_version": {"type": "integer"},
                    "epoch": {"type": "integer"},
                    "variant": {"type": "string", "enum": ["online", "baseline"]},
                    "event_ids": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "present when predictions are logged",
                    },
                    "age_s": {"type": "number"},
                    "stale": {"type": "boolean"},
                    "degraded": {"type": "boolean"},
                    "fallback": {"type": "boolean"},
                    "pinned": {"type": "integer", "nullable": True},
                    "pin_missing": {"type": "boolean"},
                    "shadow": {
                        "type": "object",
                        "properties": {
                            "variant": {"type": "string"},
                            "model_version": {"type": "integer"},
                            "predictions": {"type": "array"},
                        },
                    },
                },
            },
            "Model": {
                "type": "object",
                "required": ["name", "ready", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "ready": {"type": "boolean"},
                    "state": {
                        "type": "string",
                        "enum": ["loading", "ready", "stale", "degraded", "fallback"],
                    },
                    "version": {"type": "integer"},
                    "latest_version": {"type": "integer"},
                    "epoch": {"type": "integer"},
                    "age_s": {"type": "number"},
                    "spec": {"type": "object"},
                    "pinned": {"type": "integer", "nullable": True},
                    "pin_missing": {"type": "boolean"},
                    "stale": {"type": "boolean"},
                    "degraded": {"type": "boolean"},
                    "variants": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}
