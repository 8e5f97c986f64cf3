"""Exception classes of the Python adapter and the mapping from gateway error codes."""

from __future__ import annotations

from ._proto import gateway_pb2 as pb


class NexusError(Exception):
    """Base class of every error raised by the adapter."""


class InvalidSubjectError(NexusError, ValueError):
    """The subject or subscription pattern is malformed or reserved (checked locally)."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"invalid subject {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason


class InvalidAddressError(NexusError, ValueError):
    """The gateway address (or discovery name) is malformed."""


class NoRespondersError(NexusError):
    """No subscription matched a request or stream open."""

    def __init__(self, subject: str, message: str = "") -> None:
        super().__init__(message or f"no responders for {subject!r}")
        self.subject = subject


class RequestTimeoutError(NexusError, TimeoutError):
    """A request got no answer in time (also a builtin ``TimeoutError``)."""

    def __init__(self, subject: str, after: float) -> None:
        super().__init__(f"request to {subject!r} timed out after {after:.3f}s")
        self.subject = subject
        self.after = after


class ServiceError(NexusError):
    """The responder refused the request, or vanished before answering.

    Handlers passed to :meth:`Client.serve` raise it to answer with an error.
    """


class LimitError(NexusError):
    """A configured limit was hit (payload size, subscriptions, credit...)."""


class InvalidError(NexusError):
    """The gateway considered a frame or field malformed."""


class DeniedError(NexusError, PermissionError):
    """Authentication or authorization failure (API key refused or out of scope)."""


class UnavailableError(NexusError):
    """The gateway is shutting down."""


class SlowConsumerError(NexusError):
    """Messages were dropped, or a stream aborted, because a receiver did not keep up."""


class GatewayError(NexusError):
    """Any other error code the gateway sent."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"gateway error {code}: {message}")
        self.code = code


class ProtocolError(NexusError):
    """The gateway did not follow the protocol."""


class DisconnectedError(NexusError, ConnectionError):
    """The session broke while the operation was in flight; the client reconnects itself."""


class ClosedError(NexusError):
    """The client, or this handle, was closed."""


class ConnectError(NexusError, ConnectionError):
    """Connecting to a gateway failed."""


class DiscoveryError(NexusError):
    """DNS SRV discovery failed (NXDOMAIN, no records, or no answer)."""


class NoGatewayError(NexusError, ConnectionError):
    """Every discovered gateway was tried and none accepted a session."""

    def __init__(self, target: str, attempts: list[tuple[str, str]]) -> None:
        tried = "; ".join(f"{gw}: {why}" for gw, why in attempts) or "no gateway to try"
        super().__init__(f"no gateway for {target} accepted a session: {tried}")
        self.target = target
        self.attempts = attempts


def from_error(err: pb.Error, subject: str = "", timeout: float = 0.0) -> NexusError:
    """Maps a gateway ``Error`` to the matching exception."""
    code, message = err.code, err.message
    if code == pb.NO_RESPONDERS:
        return NoRespondersError(subject, message)
    if code == pb.TIMEOUT:
        return RequestTimeoutError(subject, timeout)
    if code == pb.SERVICE_ERROR:
        return ServiceError(message)
    if code == pb.LIMIT:
        return LimitError(message)
    if code == pb.INVALID:
        return InvalidError(message)
    if code == pb.DENIED:
        return DeniedError(message)
    if code == pb.UNAVAILABLE:
        return UnavailableError(message)
    if code == pb.SLOW_CONSUMER:
        return SlowConsumerError(message)
    return GatewayError(code, message)
