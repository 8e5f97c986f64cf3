"""Subject and pattern rules (docs/protocol.md section 5), checked before anything is sent."""

from __future__ import annotations

from .errors import InvalidSubjectError

RESERVED_PREFIX = "$nexus."
MAX_SUBJECT_BYTES = 512


def _check_syntax(subject: str) -> list[str]:
    if not subject:
        raise InvalidSubjectError(subject, "empty")
    if len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidSubjectError(subject, f"longer than {MAX_SUBJECT_BYTES} bytes")
    for ch in subject:
        if ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            raise InvalidSubjectError(subject, "contains whitespace or a control character")
    tokens = subject.split(".")
    if any(t == "" for t in tokens):
        raise InvalidSubjectError(subject, "empty token")
    return tokens


def validate_publish_subject(subject: str) -> None:
    """Raises :class:`InvalidSubjectError` unless ``subject`` may be published to."""
    tokens = _check_syntax(subject)
    if any("*" in t or ">" in t for t in tokens):
        raise InvalidSubjectError(subject, "wildcards are only allowed in subscriptions")
    if subject.startswith(RESERVED_PREFIX):
        raise InvalidSubjectError(subject, f"subjects starting with {RESERVED_PREFIX} are reserved")


def validate_pattern(pattern: str) -> None:
    """Raises :class:`InvalidSubjectError` unless ``pattern`` is a valid subscription pattern."""
    tokens = _check_syntax(pattern)
    for i, t in enumerate(tokens):
        if t in ("*", ">"):
            if t == ">" and i != len(tokens) - 1:
                raise InvalidSubjectError(pattern, "'>' is only allowed as the last token")
        elif "*" in t or ">" in t:
            raise InvalidSubjectError(pattern, "wildcards must be whole tokens")
    if pattern.startswith(RESERVED_PREFIX):
        raise InvalidSubjectError(pattern, f"patterns starting with {RESERVED_PREFIX} are reserved")


def subject_matches(pattern: str, subject: str) -> bool:
    """True when ``subject`` matches ``pattern`` (``*`` one token, trailing ``>`` the rest)."""
    p, s = pattern.split("."), subject.split(".")
    for i, t in enumerate(p):
        if t == ">":
            return len(s) > i
        if i >= len(s) or (t != "*" and t != s[i]):
            return False
    return len(p) == len(s)
