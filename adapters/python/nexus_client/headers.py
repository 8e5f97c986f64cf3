"""Message headers and W3C ``traceparent`` handling, including the current trace context.

The trace context is a :mod:`contextvars` variable: a handler run by :meth:`Client.serve`
sees the request's ``traceparent``, so requests and publishes made while handling it continue
the same trace (same trace id, new span id).
"""

from __future__ import annotations

import contextvars
import secrets
from collections.abc import Iterable, Mapping

TRACEPARENT = "traceparent"

#: The ``traceparent`` of the work in progress (set while a handler runs).
current_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar("nexus_traceparent", default=None)

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]] | None


def new_traceparent(trace_id: str | None = None) -> str:
    """A fresh ``traceparent`` (random span id; random trace id unless given)."""
    trace = trace_id or secrets.token_hex(16)
    if trace == "0" * 32:
        trace = "0" * 31 + "1"
    span = secrets.token_hex(8)
    if span == "0" * 16:
        span = "0" * 15 + "1"
    return f"00-{trace}-{span}-01"


def is_valid_traceparent(value: str) -> bool:
    """True if ``value`` has the layout the gateway accepts (55 chars, lowercase hex)."""
    parts = value.split("-")
    if len(value) != 55 or len(parts) != 4:
        return False
    ver, trace, span, flags = parts
    hexd = set("0123456789abcdef")
    if [len(ver), len(trace), len(span), len(flags)] != [2, 32, 16, 2]:
        return False
    if not all(set(p) <= hexd for p in parts):
        return False
    return ver != "ff" and trace != "0" * 32 and span != "0" * 16


def to_pairs(headers: HeadersLike) -> list[tuple[str, str]]:
    """Normalises a dict or an iterable of pairs into a list of pairs."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def with_traceparent(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Adds a ``traceparent`` when missing: a child of the current context, else a new trace."""
    if any(k.lower() == TRACEPARENT for k, _ in pairs):
        return pairs
    parent = current_traceparent.get()
    trace_id = parent.split("-")[1] if parent and is_valid_traceparent(parent) else None
    return [*pairs, (TRACEPARENT, new_traceparent(trace_id))]


def get_header(pairs: Iterable[tuple[str, str]], key: str) -> str | None:
    """First value of ``key`` (case-insensitive)."""
    low = key.lower()
    for k, v in pairs:
        if k.lower() == low:
            return v
    return None


#: The header that makes every gateway record a message's hops (``nexusctl trace``).
TRACE_FORCE = "nexus-trace"
#: The header an adapter reports its own span with, on forced-traced requests and their
#: replies; the gateway records it in its trace store (docs/trace.md §2, "adapter spans").
SPAN_HEADER = "nexus-span"


def is_forced(pairs: Iterable[tuple[str, str]]) -> bool:
    """True when the headers carry ``nexus-trace: 1`` (or ``true``)."""
    v = get_header(pairs, TRACE_FORCE)
    return v is not None and v.strip().lower() in ("1", "true")


def span_id(traceparent: str | None) -> str:
    """The span id of a valid ``traceparent``, else an empty string."""
    return traceparent.split("-")[2] if traceparent and is_valid_traceparent(traceparent) else ""


def span_report(kind: str, name: str, span: str, parent: str, start_us: int, duration_us: int | None) -> str:
    """The value of a ``nexus-span`` header: ``key=value`` pairs separated by ``;``."""
    clean = name.replace(";", ",").replace("=", ":")
    fields = [f"kind={kind}", f"name={clean}", f"span={span}", f"parent={parent}", f"start_us={start_us}"]
    if duration_us is not None:
        fields.append(f"duration_us={duration_us}")
    fields.append("lang=python")
    return ";".join(fields)
