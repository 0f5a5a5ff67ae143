"""One exception tree for edgeinfer.

Library code raises these; the server maps them to OpenAI error JSON in one place
(``server/app.py``) and the CLI prints ``error.message`` as one line and picks the exit code.

::

    EdgeInferError                       500 internal_error
    ├── InvalidRequest                   400 invalid_request_error
    │   └── ContextLengthExceeded        400 context_length_exceeded
    ├── ModelNotFound                    404 model_not_found
    ├── NoSuitableModel                  422 no_suitable_model   (router constraints unmet)
    ├── ModelUnavailable                 503 model_unavailable   (failed to load, still pulling)
    │   └── InsufficientMemory           503 insufficient_memory (cannot fit the memory budget)
    ├── Busy                             503 busy                (bounded queue is full)
    │   ├── ModelLoading                 503 model_loading       (loading on demand; retry)
    │   └── RateLimited                  429 rate_limit_exceeded (too many failed TCP tokens)
    ├── RequestTimeout                   504 timeout
    ├── UpstreamError                    502 upstream_error      (a remote tier failed)
    ├── ModelCrashed                     502 model_crashed       (its runner process died)
    ├── Unauthorized                     401 invalid_api_key     (TCP without the bearer token)
    ├── PermissionDenied                 403 permission_denied   (peer uid not in allow_uids)
    ├── ShuttingDown                     503 shutting_down       (draining, or cut at its deadline)
    ├── ConfigError                      config_error            (file, key, did-you-mean)
    ├── ModelStoreError                  model_store_error
    │   └── IntegrityError               integrity_error         (size / sha256 mismatch)
    ├── EngineError                      engine_error            (llama.cpp refused something)
    ├── CacheError                       cache_error             (cache database, export file)
    └── DaemonError                      daemon_error            (socket in use, path too long)
"""

from __future__ import annotations


class EdgeInferError(Exception):
    """Base of every error edgeinfer raises on purpose.

    Attributes:
        code: stable machine-readable code, used on the wire and in logs.
        status: HTTP status the server answers with.
        type: OpenAI error ``type`` field.
        param: the request field at fault, when there is one.
    """

    code = "internal_error"
    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_wire(self, path: str) -> dict[str, object]:
        """The error body a route answers with: Ollama's ``{"error": "..."}`` under ``/api/``
        (the Ollama API), OpenAI's everywhere else."""
        return {"error": self.message} if path.startswith("/api/") else self.to_openai()

    def to_openai(self) -> dict[str, object]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(EdgeInferError):
    code = "invalid_request_error"
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(EdgeInferError):
    code = "model_not_found"
    status = 404
    type = "invalid_request_error"


class NoSuitableModel(EdgeInferError):
    """No tier meets the request's ``min_quality`` / ``max_cost`` / tags; the message says why."""

    code = "no_suitable_model"
    status = 422
    type = "invalid_request_error"


class ModelUnavailable(EdgeInferError):
    code = "model_unavailable"
    status = 503
    type = "server_error"


class InsufficientMemory(ModelUnavailable):
    """Loading the model would exceed the memory budget even after unloading every idle,
    unpinned model; the message gives the estimate, the budget and what holds the rest."""

    code = "insufficient_memory"


class Busy(EdgeInferError):
    code = "busy"
    status = 503
    type = "server_error"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoading(Busy):
    """The model is being loaded (on demand, or replaced after a config reload); a retry after
    ``retry_after`` seconds finds it ready. A ``Busy`` so the server adds ``Retry-After``."""

    code = "model_loading"


class RateLimited(Busy):
    """A TCP client that failed the bearer token too often waits out ``retry_after``."""

    code = "rate_limit_exceeded"
    status = 429
    type = "requests"


class RequestTimeout(EdgeInferError):
    code = "timeout"
    status = 504
    type = "server_error"


class Unauthorized(EdgeInferError):
    """OpenAI's code for a missing or wrong key, so SDKs raise their authentication error."""

    code = "invalid_api_key"
    status = 401
    type = "invalid_request_error"


class PermissionDenied(EdgeInferError):
    code = "permission_denied"
    status = 403
    type = "invalid_request_error"


class ShuttingDown(EdgeInferError):
    code = "shutting_down"
    status = 503
    type = "server_error"


class UpstreamError(EdgeInferError):
    """A remote tier (an OpenAI-compatible endpoint) failed after its retries."""

    code = "upstream_error"
    status = 502
    type = "server_error"


class ModelCrashed(EdgeInferError):
    """A model's runner process died (a native fault, a kill) while it held the request; the
    message names the signal or exit status and the last lines the runner wrote."""

    code = "model_crashed"
    status = 502
    type = "server_error"


class ConfigError(EdgeInferError):
    code = "config_error"


class ModelStoreError(EdgeInferError):
    code = "model_store_error"


class IntegrityError(ModelStoreError):
    code = "integrity_error"


class EngineError(EdgeInferError):
    code = "engine_error"


class DaemonError(EdgeInferError):
    code = "daemon_error"


class CacheError(EdgeInferError):
    code = "cache_error"
