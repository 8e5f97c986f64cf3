"""nexus_client: the asyncio Python adapter for Nexus.

A :class:`Client` keeps one gRPC session with a regional gateway (given by address or found
through DNS SRV with ``nexus+srv://<region>.<zone>``) and offers publish/subscribe with
wildcards and queue groups, request/reply with timeouts, responders (:meth:`Client.serve`),
bidirectional streams with credit-based backpressure, invisible batching, reconnection with
re-subscription, confirmed publishes retried with the same message id after a lost session,
graceful :meth:`Client.drain`, and W3C ``traceparent`` propagation. Options are the typed
fields of :class:`ClientOptions`; errors are the exception classes below.
"""

from .client import Client, __version__
from .discovery import DNS_SERVER_ENV
from .errors import (
    ClosedError,
    ConnectError,
    DeniedError,
    DisconnectedError,
    DiscoveryError,
    GatewayError,
    InvalidAddressError,
    InvalidError,
    InvalidSubjectError,
    LimitError,
    NexusError,
    NoGatewayError,
    NoRespondersError,
    ProtocolError,
    RequestTimeoutError,
    ServiceError,
    SlowConsumerError,
    UnavailableError,
)
from .headers import TRACEPARENT, current_traceparent, is_valid_traceparent, new_traceparent
from .message import Message, ServerInfo
from .options import ClientOptions, InvalidOptionError
from .stream import BiStream, StreamListener
from .subject import subject_matches, validate_pattern, validate_publish_subject
from .subscription import Handler, HandlerResult, Service, Subscription

__all__ = [
    "DNS_SERVER_ENV",
    "TRACEPARENT",
    "BiStream",
    "Client",
    "ClientOptions",
    "ClosedError",
    "ConnectError",
    "DeniedError",
    "DisconnectedError",
    "DiscoveryError",
    "GatewayError",
    "Handler",
    "HandlerResult",
    "InvalidAddressError",
    "InvalidError",
    "InvalidOptionError",
    "InvalidSubjectError",
    "LimitError",
    "Message",
    "NexusError",
    "NoGatewayError",
    "NoRespondersError",
    "ProtocolError",
    "RequestTimeoutError",
    "ServerInfo",
    "Service",
    "ServiceError",
    "SlowConsumerError",
    "StreamListener",
    "Subscription",
    "UnavailableError",
    "__version__",
    "current_traceparent",
    "is_valid_traceparent",
    "new_traceparent",
    "subject_matches",
    "validate_pattern",
    "validate_publish_subject",
]
