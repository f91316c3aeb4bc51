"""The OpenAPI 3 description of the predictor's HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from flowlearn.serving.auth import ADMIN_ROUTES, OPEN_ROUTES


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json({"$ref": "#/components/schemas/Error"}, "error, with a message naming the field")
_NOT_FOUND = _json(
    {"$ref": "#/components/schemas/Error"},
    "no such model: never known here, or deleted (the message says which)",
)
_MODEL_PARAM = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_LOADING = _json(
    {"$ref": "#/components/schemas/Error"}, "the model is known but no weights are loaded yet"
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _v1_post(summary: str, response: str, description: str) -> dict[str, Any]:
    """A V1 ``POST /v1/models/{model}:verb``: V1 instances in, ``response`` out."""
    return {
        "post": {
            "summary": summary,
            "parameters": [_MODEL_PARAM],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("PredictRequest")}},
            },
            "responses": {
                "200": _json(_ref(response), description),
                "400": _ERROR,
                "404": _NOT_FOUND,
                "413": _ERROR,
                "503": _LOADING,
            },
        }
    }


def _infer(summary: str, parameters: list[dict[str, Any]], not_found: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("InferenceRequest")}},
            },
            "responses": {
                "200": _json(_ref("InferenceResponse"), "the output tensors"),
                "400": _ERROR,
                "404": _json(_ref("Error"), not_found),
                "413": _ERROR,
                "503": _LOADING,
            },
        }
    }


#: A tensor's elements, flat (row-major) or nested one level (rows).
#: A number, or one per class.
_NUMBERS = [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]
_SCALAR = [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]
_TENSOR_DATA = {
    "type": "array",
    "items": {"anyOf": [*_SCALAR, {"type": "array", "items": {"anyOf": _SCALAR}}]},
}
_PARAMETERS = {
    "type": "object",
    "additionalProperties": {"anyOf": _SCALAR},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "flowlearn predictor",
        "version": "1",
        "description": "Predictions from models followed in Redis: KServe V1 (/v1) and the "
        "Open Inference Protocol, V2 REST (/v2).",
    },
    "paths": {
        "/v1/models": {
            "get": {
                "summary": "Models known to this predictor: their names (KServe V1), or with "
                "detail=true each as GET /v1/models/{model} describes it",
                "parameters": [
                    {
                        "name": "detail",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": False},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["models"],
                            "properties": {
                                "models": {
                                    "oneOf": [
                                        {"type": "array", "items": {"type": "string"}},
                                        {"type": "array", "items": _ref("Model")},
                                    ]
                                }
                            },
                        },
                        "the models",
                    ),
                    "400": _ERROR,
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
        "/v1/models/{model}:predict": _v1_post(
            "Score instances with the served version", "PredictResponse", "predictions"
        ),
        "/v1/models/{model}:explain": _v1_post(
            "Each feature's share of each instance's raw score (linear models)",
            "ExplainResponse",
            "shares",
        ),
        "/v1/models/{model}:choose": _v1_post(
            "A contextual bandit's actions for contexts, with propensities",
            "ChooseResponse",
            "choices",
        ),
        "/v2": {
            "get": {
                "summary": "Server metadata (Open Inference Protocol)",
                "responses": {"200": _json(_ref("ServerMetadata"), "the server")},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Liveness (V2)",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["live"],
                            "properties": {"live": {"type": "boolean"}},
                        },
                        "live",
                    )
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness (V2): as /readyz, once the models set was read and every "
                "model is loaded",
                "responses": {
                    "200": _json(_ref("ServerReady"), "ready"),
                    "503": _json(_ref("ServerReady"), "not ready"),
                },
            }
        },
        "/v2/models/{model}": {
            "get": {
                "summary": "Model metadata (V2): the served version, the input and outputs",
                "parameters": [_MODEL_PARAM],
                "responses": {
                    "200": _json(_ref("ModelMetadata"), "the model"),
                    "404": _NOT_FOUND,
                    "503": _LOADING,
                },
            }
        },
        "/v2/models/{model}/ready": {
            "get": {
                "summary": "Model readiness (V2)",
                "parameters": [_MODEL_PARAM],
                "responses": {
                    "200": _json(_ref("ModelReady"), "ready"),
                    "404": _NOT_FOUND,
                    "503": _json(_ref("ModelReady"), "known, no weights loaded yet"),
                },
            }
        },
        "/v2/models/{model}/infer": _infer(
            "Inference (V2) with the served version",
            [_MODEL_PARAM],
            "no such model: never known here, or deleted (the message says which)",
        ),
        "/v2/models/{model}/versions/{version}/infer": _infer(
            "Inference (V2) with one version: only the one served now",
            [_MODEL_PARAM, _VERSION_PARAM],
            "no such model, or that version is not the one served",
        ),
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
        "/v1/admin/reload": {
            "post": {
                "summary": "Read the bearer tokens again (predictor.tokens_file and "
                "predictor.tokens): how many of each scope are loaded now",
                "responses": {
                    "200": _json(_ref("TokensLoaded"), "the tokens now in force, by scope"),
                    "500": _json(
                        _ref("Error"),
                        "the tokens cannot be read (the message names the file and line); "
                        "the previous ones stay in force",
                    ),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of predictor.tokens_file or predictor.tokens, asked "
                "for when predictor.auth is on (by default: when the predictor listens beyond "
                "loopback or tokens are configured). Scope read opens every secured route but "
                "/metrics and /v1/admin/reload, which need scope admin.",
            }
        },
        "schemas": {
            "TokensLoaded": {
                "type": "object",
                "required": ["required", "tokens"],
                "properties": {
                    "required": {
                        "type": "boolean",
                        "description": "whether requests need a token (predictor.auth)",
                    },
                    "tokens": {
                        "type": "object",
                        "description": "how many tokens of each scope are loaded",
                        "additionalProperties": {"type": "integer"},
                    },
                },
            },
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
                "description": "instances, or (as KServe takes it) the same list as inputs",
                "type": "object",
                "oneOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
                "properties": {
                    "instances": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/Instance"},
                    },
                    "inputs": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/Instance"},
                    },
                },
            },
            "ServerMetadata": {
                "type": "object",
                "required": ["name", "version", "extensions"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "extensions": {"type": "array", "items": {"type": "string"}},
                },
            },
            "ServerReady": {
                "type": "object",
                "required": ["ready"],
                "properties": {"ready": {"type": "boolean"}},
            },
            "ModelReady": {
                "type": "object",
                "required": ["name", "ready"],
                "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
            },
            "MetadataTensor": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                },
            },
            "ModelMetadata": {
                "type": "object",
                "required": ["name", "versions", "platform", "inputs", "outputs"],
                "properties": {
                    "name": {"type": "string"},
                    "versions": {"type": "array", "items": {"type": "string"}},
                    "platform": {"type": "string", "enum": ["flowlearn"]},
                    "inputs": {"type": "array", "items": _ref("MetadataTensor")},
                    "outputs": {"type": "array", "items": _ref("MetadataTensor")},
                },
            },
            "InferenceRequest": {
                "description": "One feature tensor (FP64, FP32, INT64 or INT32 of shape "
                "[n, n_features]; BYTES [n] of JSON objects for hashed or named features), "
                "and optionally event_id (BYTES [n])",
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
                    "outputs": {"type": "array", "items": _ref("RequestOutput")},
                },
            },
            "RequestInput": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string"},
                    "parameters": {"type": "object"},
                    "data": _TENSOR_DATA,
                },
            },
            "RequestOutput": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": ["predict", "proba", "event_id"]},
                    "parameters": {"type": "object"},
                },
            },
            "InferenceResponse": {
                "type": "object",
                "required": ["model_name", "model_version", "id", "outputs"],
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "parameters": _PARAMETERS,
                    "outputs": {"type": "array", "items": _ref("ResponseOutput")},
                },
            },
            "ResponseOutput": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": ["INT64", "FP64", "BYTES"]},
                    "data": {"type": "array", "items": {"anyOf": _SCALAR}},
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
            "ChooseResponse": {
                "type": "object",
                "required": ["choices", "event_ids", "model_version", "epoch"],
                "properties": {
                    "choices": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["action", "propensity", "probabilities"],
                            "properties": {
                                "action": {
                                    "type": "integer",
                                    "description": "the chosen action's index (among the "
                                    "listed actions, or the instance's candidates)",
                                },
                                "propensity": {"type": "number"},
                                "probabilities": {"type": "array", "items": {"type": "number"}},
                            },
                        },
                    },
                    "event_ids": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "send each choice's reward on fl.labels with its id",
                    },
                    "model_version": {"type": "integer"},
                    "epoch": {"type": "integer"},
                    "logged": {"type": "boolean"},
                },
            },
            "ExplainResponse": {
                "type": "object",
                "required": ["explanations", "base", "output", "model_version", "epoch"],
                "properties": {
                    "explanations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["contributions", "score"],
                            "properties": {
                                "contributions": {
                                    "type": "array",
                                    "description": "per feature: its share of the score (a "
                                    "softmax model: one share per class)",
                                    "items": {"oneOf": _NUMBERS},
                                },
                                "score": {"oneOf": _NUMBERS},
                            },
                        },
                    },
                    "base": {
                        "description": "what no feature explains (the intercept; a scaled "
                        "target's mean joins it)",
                        "oneOf": _NUMBERS,
                    },
                    "output": {"type": "string", "enum": ["logit", "class_scores", "value"]},
                    "feature_names": {"type": "array", "items": {"type": "string"}},
                    "model_version": {"type": "integer"},
                    "epoch": {"type": "integer"},
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
        },
    },
}


def _declare_security(doc: dict[str, Any]) -> None:
    """Every operation needs the bearer token but the health probes'; 401 and 403 answers
    where the guard (flowlearn.serving.auth) gives them."""
    doc["security"] = [{"bearer": []}]
    refused = _json(_ref("Error"), "no bearer token, or not a valid one (when auth is on)")
    scope = _json(_ref("Error"), "a read token on a route that needs an admin one")
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            if path in OPEN_ROUTES:
                operation["security"] = []
                continue
            operation["responses"]["401"] = refused
            if path in ADMIN_ROUTES:
                operation["responses"]["403"] = scope


_declare_security(OPENAPI)
