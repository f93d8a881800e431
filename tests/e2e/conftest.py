"""End-to-end tests share the integration tests' gateway environment."""

from tests.integration.conftest import anyio_backend, env

__all__ = ["anyio_backend", "env"]
