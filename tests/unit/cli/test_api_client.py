"""bridge.cli.api_client: what --api-url does when it cannot get an answer (one line, no token)."""

from __future__ import annotations

import pytest

from bridge.cli.api_client import ApiClient
from bridge.errors import ConfigError
from bridge.worker.embedded import free_port


def test_a_url_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="BRIDGE_API_TOKEN"):
        ApiClient("http://127.0.0.1:1", None)


def test_an_api_that_does_not_answer_is_one_line_without_the_token() -> None:
    token = "wbt_never-printed-0123456789"
    with ApiClient(f"http://127.0.0.1:{free_port()}", token, timeout=2.0) as client:
        with pytest.raises(ConfigError) as caught:
            client.get("/v1/webhooks")
    assert "did not answer" in str(caught.value)
    assert token not in str(caught.value) and "\n" not in str(caught.value)
