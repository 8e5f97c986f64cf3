"""nexus_client: the asyncio Python adapter for Nexus.

A :class:`Client` keeps one gRPC session with a regional gateway (given by address or found
through DNS SRV with ``nexus+srv://<region>.<zone>``) and offers publish/subscribe with
wildcards and queue groups, request/reply with timeouts, responders (:meth:`Client.serve`),
bidirectional streams with credit-based backpressure, invisible batching, reconnection with
re-subscription, and W3C ``traceparent`` propagation. Errors are the exception classes below.
"""

from .client import Client, Service, Subscription, __version__
from .discovery import DNS_SERVER_ENV
from .errors import (
    ClosedError, ConnectError, DeniedError, DisconnectedError, DiscoveryError, GatewayError,
    InvalidAddressError, InvalidError, InvalidSubjectError, LimitError, NexusError,
    NoGatewayError, NoRespondersError, ProtocolError, RequestTimeoutError, ServiceError,
    SlowConsumerError, UnavailableError,
)
from .headers import TRACEPARENT, current_traceparent, is_valid_traceparent, new_traceparent
from .message import Message, ServerInfo
from .stream import BiStream, StreamListener
from .subject import subject_matches, validate_pattern, validate_publish_subject

__all__ = [
    "Client", "Service", "Subscription", "Message", "ServerInfo", "BiStream", "StreamListener",
    "NexusError", "InvalidSubjectError", "InvalidAddressError", "NoRespondersError",
    "RequestTimeoutError", "ServiceError", "LimitError", "InvalidError", "DeniedError",
    "UnavailableError", "SlowConsumerError", "GatewayError", "ProtocolError", "DisconnectedError",
    "ClosedError", "ConnectError", "DiscoveryError", "NoGatewayError", "TRACEPARENT",
    "current_traceparent", "is_valid_traceparent", "new_traceparent", "subject_matches",
    "validate_pattern", "validate_publish_subject", "DNS_SERVER_ENV", "__version__",
]
