"""The control plane's HTTP API (``/v1``): its OpenAPI document, auth, problems and routes."""
