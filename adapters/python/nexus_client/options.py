"""The client's settings: one typed, validated record (:class:`ClientOptions`).

:meth:`Client.connect <nexus_client.Client.connect>` takes the same names as keyword
arguments, so type checkers and editors see every option with its type and default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import NexusError


class InvalidOptionError(NexusError, ValueError):
    """An option of :class:`ClientOptions` is out of range; the message names it."""


@dataclass(frozen=True)
class ClientOptions:
    """Settings of a :class:`~nexus_client.Client`, fixed at connect time."""

    #: API key sent in Hello (default: the ``NEXUS_API_KEY`` environment variable).
    api_key: str = field(default_factory=lambda: os.environ.get("NEXUS_API_KEY", ""))
    #: Client name reported to the gateway.
    name: str = ""
    #: Default timeout of requests, acknowledgements and stream opens, in seconds.
    request_timeout: float = 5.0
    #: Timeout of the TCP connect and the Hello/Welcome handshake, in seconds.
    connect_timeout: float = 5.0
    #: DNS server for ``nexus+srv://`` names, ``ip[:port]`` (else ``?dns=``,
    #: ``NEXUS_DNS_SERVER``, then the system resolver).
    dns_server: str | None = None
    #: Reconnect delays in seconds: starting at the first, doubling up to the second, jittered.
    reconnect_backoff: tuple[float, float] = (0.1, 5.0)
    #: Most frames per outgoing batch.
    max_batch_frames: int = 256
    #: Approximate most bytes per outgoing batch.
    max_batch_bytes: int = 256 * 1024
    #: Capacity of the outgoing queue in frames; a full queue makes ``publish`` wait.
    outbound_capacity: int = 1024
    #: Buffered deliveries per subscription; when full, the client stops reading.
    subscription_capacity: int = 1024
    #: Receive window of each stream, in frames.
    stream_window: int = 256
    #: Handlers of one :class:`~nexus_client.Service` running at once.
    max_concurrent_handlers: int = 64
    #: How long a confirmed publish (``publish(..., ack=True)``) keeps retrying, with the same
    #: message id, after the session was lost before its acknowledgement came, in seconds.
    #: The gateway de-duplicates the retries on ``async`` and ``sync`` routes. ``0`` turns
    #: retrying off: the publish then fails with :class:`~nexus_client.DisconnectedError`.
    publish_retry_timeout: float = 30.0
    #: Check payloads against the gateway's ``max_payload`` before sending (a
    #: :class:`~nexus_client.LimitError` without a round trip). With ``False`` the gateway's
    #: own check answers, with the same error class.
    local_payload_check: bool = True
    #: Codec for outgoing payloads of at least ``compression_threshold`` bytes: ``"zstd"``
    #: (default), ``"lz4"`` or ``None`` (plain). Used when the gateway accepts it and its library
    #: is installed (``pip install nexus-client[compression]``); received compressed payloads are
    #: always decoded, so applications only ever see plain payloads.
    compression: str | None = "zstd"
    #: Payloads of at least this many bytes are compressed.
    compression_threshold: int = 1024
    #: Connect to discovered gateways (``nexus+srv://``) over TLS too; an ``https://``
    #: address always uses TLS.
    tls: bool = False
    #: PEM file of the CA(s) to trust for the gateway's certificate (default: the system's).
    tls_ca_file: str | None = None
    #: PEM client certificate and key, for gateways that require one (``--tls-client-ca``).
    tls_client_cert_file: str | None = None
    tls_client_key_file: str | None = None
    #: The name the gateway's certificate must carry, instead of the address's host.
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        positive = {
            "request_timeout": self.request_timeout,
            "connect_timeout": self.connect_timeout,
            "max_batch_frames": self.max_batch_frames,
            "max_batch_bytes": self.max_batch_bytes,
            "outbound_capacity": self.outbound_capacity,
            "subscription_capacity": self.subscription_capacity,
            "stream_window": self.stream_window,
            "max_concurrent_handlers": self.max_concurrent_handlers,
        }
        if self.compression not in (None, "zstd", "lz4"):
            raise InvalidOptionError(f"compression must be 'zstd', 'lz4' or None, not {self.compression!r}")
        if self.compression_threshold < 0:
            raise InvalidOptionError(f"compression_threshold must be >= 0, not {self.compression_threshold}")
        for name, value in positive.items():
            if not value > 0:
                raise InvalidOptionError(f"{name} must be positive, got {value!r}")
        if self.publish_retry_timeout < 0:
            raise InvalidOptionError(
                f"publish_retry_timeout must be 0 (off) or positive, got {self.publish_retry_timeout!r}"
            )
        if (self.tls_client_cert_file is None) != (self.tls_client_key_file is None):
            raise InvalidOptionError("tls_client_cert_file and tls_client_key_file go together")
        lo, hi = self.reconnect_backoff
        if not 0 < lo <= hi:
            raise InvalidOptionError(
                f"reconnect_backoff must be (min, max) with 0 < min <= max, got {self.reconnect_backoff!r}"
            )
