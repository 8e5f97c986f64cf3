"""Messages received from the gateway and information about the session."""

from __future__ import annotations

from dataclasses import dataclass, field

from .headers import TRACEPARENT, get_header


@dataclass
class Message:
    """A delivery: a published message, a request to answer, or one frame of a stream."""

    subject: str
    payload: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The inbox to answer for a request (``$nexus.inbox.<n>``), or the publisher's reply_to.
    reply_to: str = ""
    #: The 16-byte message id (ULID) assigned by the publisher or the gateway.
    id: bytes = b""
    #: The subscription id this delivery is for.
    sid: int = 0
    #: For requests: milliseconds left before the requester gives up.
    deadline_ms: int = 0

    def header(self, key: str) -> str | None:
        """First value of header ``key`` (case-insensitive), or ``None``."""
        return get_header(self.headers, key)

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` the message carries."""
        return self.header(TRACEPARENT)

    @property
    def is_request(self) -> bool:
        """True when the sender waits for an answer (see :meth:`Client.reply`)."""
        return self.reply_to.startswith("$nexus.inbox.") and self.deadline_ms > 0

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8", errors="replace")


@dataclass
class ServerInfo:
    """What the gateway said in its Welcome, and where it is."""

    gateway_id: str
    region: str
    session_id: str
    max_payload: int
    max_subscriptions: int
    address: str
    #: Payload codecs the gateway accepts (docs/protocol.md section 9.2).
    encodings: tuple[str, ...] = ()
