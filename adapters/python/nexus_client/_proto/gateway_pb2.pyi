from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    INVALID: _ClassVar[ErrorCode]
    LIMIT: _ClassVar[ErrorCode]
    NO_RESPONDERS: _ClassVar[ErrorCode]
    TIMEOUT: _ClassVar[ErrorCode]
    SERVICE_ERROR: _ClassVar[ErrorCode]
    DENIED: _ClassVar[ErrorCode]
    SLOW_CONSUMER: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
INVALID: ErrorCode
LIMIT: ErrorCode
NO_RESPONDERS: ErrorCode
TIMEOUT: ErrorCode
SERVICE_ERROR: ErrorCode
DENIED: ErrorCode
SLOW_CONSUMER: ErrorCode
UNAVAILABLE: ErrorCode

class Batch(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("hello", "welcome", "sub", "unsub", "pub", "msg", "req", "reply", "ack", "nack", "credit", "error", "ping", "pong", "stream_open", "stream_data", "stream_close", "go_away")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    UNSUB_FIELD_NUMBER: _ClassVar[int]
    PUB_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    REQ_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    STREAM_OPEN_FIELD_NUMBER: _ClassVar[int]
    STREAM_DATA_FIELD_NUMBER: _ClassVar[int]
    STREAM_CLOSE_FIELD_NUMBER: _ClassVar[int]
    GO_AWAY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    welcome: Welcome
    sub: Sub
    unsub: Unsub
    pub: Pub
    msg: Msg
    req: Req
    reply: Reply
    ack: Ack
    nack: Nack
    credit: Credit
    error: Error
    ping: Ping
    pong: Pong
    stream_open: StreamOpen
    stream_data: StreamData
    stream_close: StreamClose
    go_away: GoAway
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., sub: _Optional[_Union[Sub, _Mapping]] = ..., unsub: _Optional[_Union[Unsub, _Mapping]] = ..., pub: _Optional[_Union[Pub, _Mapping]] = ..., msg: _Optional[_Union[Msg, _Mapping]] = ..., req: _Optional[_Union[Req, _Mapping]] = ..., reply: _Optional[_Union[Reply, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., stream_open: _Optional[_Union[StreamOpen, _Mapping]] = ..., stream_data: _Optional[_Union[StreamData, _Mapping]] = ..., stream_close: _Optional[_Union[StreamClose, _Mapping]] = ..., go_away: _Optional[_Union[GoAway, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("api_key", "client_name", "language", "version", "protocol", "encodings")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    client_name: str
    language: str
    version: str
    protocol: int
    encodings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, api_key: _Optional[str] = ..., client_name: _Optional[str] = ..., language: _Optional[str] = ..., version: _Optional[str] = ..., protocol: _Optional[int] = ..., encodings: _Optional[_Iterable[str]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "gateway_id", "region", "max_payload", "max_subscriptions", "protocol", "encodings")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    gateway_id: str
    region: str
    max_payload: int
    max_subscriptions: int
    protocol: int
    encodings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., region: _Optional[str] = ..., max_payload: _Optional[int] = ..., max_subscriptions: _Optional[int] = ..., protocol: _Optional[int] = ..., encodings: _Optional[_Iterable[str]] = ...) -> None: ...

class Sub(_message.Message):
    __slots__ = ("sid", "subject", "queue_group", "ack_id")
    SID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    sid: int
    subject: str
    queue_group: str
    ack_id: int
    def __init__(self, sid: _Optional[int] = ..., subject: _Optional[str] = ..., queue_group: _Optional[str] = ..., ack_id: _Optional[int] = ...) -> None: ...

class Unsub(_message.Message):
    __slots__ = ("sid",)
    SID_FIELD_NUMBER: _ClassVar[int]
    sid: int
    def __init__(self, sid: _Optional[int] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Pub(_message.Message):
    __slots__ = ("subject", "reply_to", "headers", "payload", "id", "ack_id")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    reply_to: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    id: bytes
    ack_id: int
    def __init__(self, subject: _Optional[str] = ..., reply_to: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ..., id: _Optional[bytes] = ..., ack_id: _Optional[int] = ...) -> None: ...

class Msg(_message.Message):
    __slots__ = ("sid", "subject", "reply_to", "headers", "payload", "id", "deadline_ms")
    SID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    sid: int
    subject: str
    reply_to: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    id: bytes
    deadline_ms: int
    def __init__(self, sid: _Optional[int] = ..., subject: _Optional[str] = ..., reply_to: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ..., id: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class Req(_message.Message):
    __slots__ = ("req_id", "subject", "headers", "payload", "timeout_ms", "id")
    REQ_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    req_id: int
    subject: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    timeout_ms: int
    id: bytes
    def __init__(self, req_id: _Optional[int] = ..., subject: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., id: _Optional[bytes] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("req_id", "reply_to", "headers", "payload", "error")
    REQ_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    req_id: int
    reply_to: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    error: Error
    def __init__(self, req_id: _Optional[int] = ..., reply_to: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ack_id", "delivered", "forwarded_regions", "spooled_regions", "duplicate")
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ack_id: int
    delivered: int
    forwarded_regions: _containers.RepeatedScalarFieldContainer[str]
    spooled_regions: _containers.RepeatedScalarFieldContainer[str]
    duplicate: bool
    def __init__(self, ack_id: _Optional[int] = ..., delivered: _Optional[int] = ..., forwarded_regions: _Optional[_Iterable[str]] = ..., spooled_regions: _Optional[_Iterable[str]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("ack_id", "reply_to", "error")
    ACK_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ack_id: int
    reply_to: str
    error: Error
    def __init__(self, ack_id: _Optional[int] = ..., reply_to: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("stream_id", "credits")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    credits: int
    def __init__(self, stream_id: _Optional[int] = ..., credits: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "ref_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REF_ID_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    ref_id: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., ref_id: _Optional[int] = ...) -> None: ...

class GoAway(_message.Message):
    __slots__ = ("reason", "drain_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRAIN_MS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    drain_ms: int
    def __init__(self, reason: _Optional[str] = ..., drain_ms: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("stream_id", "subject", "headers", "credits", "sid")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    subject: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    credits: int
    sid: int
    def __init__(self, stream_id: _Optional[int] = ..., subject: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., credits: _Optional[int] = ..., sid: _Optional[int] = ...) -> None: ...

class StreamData(_message.Message):
    __slots__ = ("stream_id", "payload", "headers")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    payload: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, stream_id: _Optional[int] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class StreamClose(_message.Message):
    __slots__ = ("stream_id", "error")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    error: Error
    def __init__(self, stream_id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("api_key", "subject", "headers", "payload", "id")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    subject: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    id: bytes
    def __init__(self, api_key: _Optional[str] = ..., subject: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ..., id: _Optional[bytes] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("id", "delivered", "forwarded_regions", "spooled_regions", "duplicate")
    ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    delivered: int
    forwarded_regions: _containers.RepeatedScalarFieldContainer[str]
    spooled_regions: _containers.RepeatedScalarFieldContainer[str]
    duplicate: bool
    def __init__(self, id: _Optional[bytes] = ..., delivered: _Optional[int] = ..., forwarded_regions: _Optional[_Iterable[str]] = ..., spooled_regions: _Optional[_Iterable[str]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class RequestRequest(_message.Message):
    __slots__ = ("api_key", "subject", "headers", "payload", "timeout_ms")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    subject: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    timeout_ms: int
    def __init__(self, api_key: _Optional[str] = ..., subject: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RequestResponse(_message.Message):
    __slots__ = ("headers", "payload")
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    payload: bytes
    def __init__(self, headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., payload: _Optional[bytes] = ...) -> None: ...
