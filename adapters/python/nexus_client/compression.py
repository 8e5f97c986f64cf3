"""Payload compression on the session (docs/protocol.md section 9.2), invisible to applications.

The client lists in its Hello the codecs it can decode (those whose library is installed:
``zstandard`` for ``zstd``, ``lz4`` for ``lz4``; ``pip install nexus-client[compression]``), and the
gateway lists in its Welcome the codecs it accepts. Outgoing ``Pub``, ``Req``, ``Reply`` and
``StreamData`` payloads of at least ``compression_threshold`` bytes are compressed by the writer
with ``ClientOptions.compression`` when the gateway accepts it and the result is smaller, and
marked with the ``nexus-encoding`` header. Incoming compressed payloads are decompressed (bounded
by the gateway's ``max_payload``) and the header removed before the application sees them. A
client without either library still works: it lists nothing, and the gateway sends it plain
payloads.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._proto import gateway_pb2 as pb
from .errors import ProtocolError

HEADER = "nexus-encoding"
#: Payloads smaller than this are sent plain by default.
DEFAULT_THRESHOLD = 1024
#: Largest payload decoded when the gateway did not say.
FALLBACK_MAX = 64 << 20


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:  # depends on the installation
        return None


_zstd: Any = _optional("zstandard")
_lz4: Any = _optional("lz4.block")


class CompressionError(ProtocolError):
    """A compressed payload could not be decoded (corrupt, too large, or an unknown codec)."""


def available() -> list[str]:
    """The codecs this installation can compress and decompress, best first."""
    out = []
    if _zstd is not None:
        out.append("zstd")
    if _lz4 is not None:
        out.append("lz4")
    return out


def compress(codec: str, data: bytes, zstd_level: int = 3) -> bytes:
    if codec == "zstd" and _zstd is not None:
        # write_content_size is the default: the frame declares its decompressed size.
        return bytes(_zstd.ZstdCompressor(level=zstd_level).compress(data))
    if codec == "lz4" and _lz4 is not None:
        return bytes(_lz4.compress(data, store_size=True))
    raise CompressionError(f"codec {codec!r} is not available (installed: {', '.join(available()) or 'none'})")


def declared_size(codec: str, data: bytes) -> int:
    """The decompressed size a payload declares, from its header only."""
    if codec == "zstd" and _zstd is not None:
        try:
            size = int(_zstd.frame_content_size(data))
        except _zstd.ZstdError:
            raise CompressionError("zstd payload is corrupt: not a zstd frame") from None
        if size < 0:
            raise CompressionError("zstd payload is corrupt: the frame does not declare its decompressed size")
        return size
    if codec == "lz4" and _lz4 is not None:
        if len(data) < 4:
            raise CompressionError("lz4 payload is corrupt: shorter than its 4-byte size prefix")
        return int.from_bytes(data[:4], "little")
    raise CompressionError(f"payload encoding {codec!r} (header nexus-encoding) is not supported here")


def decompress(codec: str, data: bytes, max_size: int) -> bytes:
    """Decompresses ``data``, refusing anything that declares more than ``max_size`` bytes
    before allocating it."""
    size = declared_size(codec, data)
    if size > max_size:
        raise CompressionError(
            f"{codec} payload declares {size} decompressed bytes, which exceeds max_payload ({max_size} bytes)"
        )
    try:
        if codec == "zstd":
            out = bytes(_zstd.ZstdDecompressor().decompress(data, max_output_size=size))
        else:
            out = bytes(_lz4.decompress(data))
    except Exception as e:  # the libraries raise their own error types
        raise CompressionError(f"{codec} payload is corrupt: {e}") from None
    if len(out) != size:
        raise CompressionError(f"{codec} payload is corrupt: decompressed to {len(out)} bytes, not {size}")
    return out


def _encoding(headers: Any) -> str | None:
    for h in headers:
        if h.key.lower() == HEADER:
            return str(h.value)
    return None


def encode_frame(frame: pb.Frame, codec: str | None, accepted: list[str], threshold: int) -> None:
    """Compresses the payload of an outgoing frame in place when worth it."""
    if codec is None or codec not in accepted or codec not in available():
        return
    kind = frame.WhichOneof("kind")
    if kind not in ("pub", "req", "reply", "stream_data"):
        return
    body = getattr(frame, kind)
    if kind == "reply" and body.HasField("error"):
        return
    if len(body.payload) < max(threshold, 1) or _encoding(body.headers) is not None:
        return
    packed = compress(codec, body.payload)
    if len(packed) >= len(body.payload):
        return
    body.payload = packed
    body.headers.add(key=HEADER, value=codec)


def decode_in_place(body: Any, max_payload: int) -> None:
    """Decompresses a received ``Msg``/``Reply``/``StreamData`` payload in place and removes the
    header; raises :class:`CompressionError` naming the problem."""
    codec = _encoding(body.headers)
    if codec is None:
        return
    plain = decompress(codec.lower(), body.payload, max_payload or FALLBACK_MAX)
    keep = [h for h in body.headers if h.key.lower() != HEADER]
    del body.headers[:]
    body.headers.extend(keep)
    body.payload = plain
