"""OpenAI's error body, {"error": {"message", "type", "param", "code"}}, for every error the server returns.

Bad input is 400 (pydantic's validation errors and bad JSON included), a missing or wrong API key 401, an
engine that is starting or has died 503; the message names the problem and the fix, on one line.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    500: "internal_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered with OpenAI's body and this HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body OpenAI's clients parse into their APIError."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), status_code=err.status)


def _location(loc: tuple[Any, ...]) -> str | None:
    """pydantic's error location without the leading "body", as a dotted parameter name."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line for the first validation error (bad JSON included) and the parameter it concerns."""
    errors = exc.errors()
    if not errors:
        return "the request body is not valid", None
    first = errors[0]
    param = _location(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('msg', 'parse error')}); send a JSON object", None
    if param is None:  # the body as a whole: not an object (or not sent as JSON)
        return "the request body must be a JSON object (Content-Type: application/json)", None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app raises or FastAPI finds becomes OpenAI's error body."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(cast(APIError, exc))  # FastAPI dispatches by type

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        message, param = validation_message(cast(RequestValidationError, exc))
        return error_response(bad_request(message, param))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        http = cast(StarletteHTTPException, exc)
        return error_response(APIError(http.status_code, str(http.detail)))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
