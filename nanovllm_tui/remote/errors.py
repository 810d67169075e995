"""The few ways a remote server can fail, each with a one-line message a banner can show as is."""

from __future__ import annotations


class RemoteError(Exception):
    """Any failure talking to the remote server; str(e) is one line naming the problem (and the fix if known)."""


class ServerUnreachable(RemoteError):
    """No answer at the transport level: refused, reset, DNS, TLS handshake, connect timeout (worth retrying)."""


class ServerTimeout(RemoteError):
    """The server accepted the connection but did not answer within the timeout."""


class Unauthorized(RemoteError):
    """401/403: the server wants an API key or rejected ours (retrying does not help)."""


class BadResponse(RemoteError):
    """The server answered, but not with what an OpenAI/vLLM server sends (garbage, wrong status, wrong shape)."""


class RequestRejected(RemoteError):
    """The server refused or failed one request (a 4xx status, or an error event inside a stream)."""
