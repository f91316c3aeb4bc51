"""The predictor: follows models in Redis and serves them over HTTP."""
