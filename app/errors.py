"""Domain errors of the serving core. They carry a stable code, a message and details,
never a transport status: each API maps them (`app/api/edge/errors.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ServingError(Exception):
    code = "internal_error"

    def __init__(self, message: str, details: Any = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s


class InvalidInput(ServingError):
    """The caller's inputs cannot be served (wrong type, too many, too long)."""
    code = "invalid_input"


class ModelNotFound(ServingError):
    """No such model, or that version is not served."""
    code = "model_not_found"


class ModelNotReady(ServingError):
    """The model exists but no version of it can answer now."""
    code = "model_not_ready"


class QueueFull(ServingError):
    code = "queue_full"


class DeadlineExceeded(ServingError):
    code = "deadline_exceeded"


class ClientCancelled(ServingError):
    """The client went away while its request waited; nobody receives the answer."""
    code = "client_closed_request"


class ChangeRefused(ServingError):
    """A repository change this process cannot make for the whole service."""
    code = "conflict"


class LoadFailed(ServingError):
    """A load asked for did not happen; what serves is unchanged. `model` is the model's
    view after the attempt, for the API to report."""
    code = "load_failed"

    def __init__(self, message: str, model: Any = None, details: Any = None) -> None:
        super().__init__(message, details)
        self.model = model


class InferenceFailed(ServingError):
    code = "inference_failed"


CLIENT_ERRORS = (InvalidInput, ModelNotFound)


def mapped(exc: ServingError, table: Mapping[type[ServingError], T], default: T) -> T:
    """What `table` (error class -> a protocol's status) says for `exc`, by its nearest
    class; each API keeps its own table."""
    for cls in type(exc).__mro__:
        if issubclass(cls, ServingError) and cls in table:
            return table[cls]
    return default


def error_body(code: str, message: str, details: Any = None) -> dict[str, dict[str, Any]]:
    """The one error shape of the service's own API: `{"error": {code, message, details}}`."""
    return {"error": {"code": code, "message": message, "details": details}}
