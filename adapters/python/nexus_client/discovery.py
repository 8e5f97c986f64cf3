"""Gateway addresses: ``http://host:port``, ``https://host:port`` (TLS) or DNS SRV discovery
names.

``nexus+srv://<region>.<zone>[?dns=ip[:port]]`` looks up ``_nexus._tcp.<region>.<zone>``
(published by the control plane's DNS responder), orders the records per RFC 2782 (lowest
priority first, weighted random order within a priority) and resolves each target (A/AAAA
glue of the answer, else A lookups). The answer is cached until its TTL runs out or a round
in which no gateway accepted a session.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from .errors import DiscoveryError, InvalidAddressError

SRV_SCHEME = "nexus+srv"
DNS_SERVER_ENV = "NEXUS_DNS_SERVER"


@dataclass
class Endpoint:
    """One gateway to try: its name (from DNS, or the address) and ``host:port``."""

    name: str
    address: str


def _parse_dns_server(value: str, addr: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if not host:
        host, port = value, ""
    try:
        return host, int(port) if port else 53
    except ValueError:
        raise InvalidAddressError(f"invalid gateway address {addr!r}: bad DNS server {value!r}") from None


class SrvRecord(Protocol):
    """What ordering needs of an SRV record."""

    @property
    def priority(self) -> int: ...

    @property
    def weight(self) -> int: ...


R = TypeVar("R", bound=SrvRecord)


def order_srv(records: list[R], rng: random.Random | None = None) -> list[R]:
    """Orders SRV records per RFC 2782: lowest priority first; within a priority, a weighted
    random order (a record of weight 0 comes first only by chance when all weights are 0)."""
    rng = rng or random.Random()
    ordered = []
    for prio in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == prio]
        while group:
            total = sum(r.weight for r in group)
            pick = rng.choice(group)
            if total > 0:
                point, acc = rng.uniform(0, total), 0
                for r in group:
                    acc += r.weight
                    if r.weight > 0 and acc >= point:
                        pick = r
                        break
            group.remove(pick)
            ordered.append(pick)
    return ordered


class Target:
    """What the application asked to connect to; yields gateways to try, in order."""

    def __init__(self, addr: str, dns_server: str | None = None, tls: bool = False) -> None:
        self.url = addr.strip()
        #: Whether sessions use TLS: ``https://``, or ``nexus+srv://`` with the ``tls`` option.
        self.tls = tls
        self.srv_name: str | None = None
        self.dns: tuple[str, int] | None = None
        self._cache: list[Endpoint] = []
        self._expires = 0.0
        #: Whether the last :meth:`endpoints` asked DNS (rather than using the cached answer).
        self.resolved_now = False
        if "://" in self.url:
            scheme, rest = self.url.split("://", 1)
        else:
            scheme, rest = "http", self.url
        if scheme == SRV_SCHEME:
            parts = urlsplit(self.url)
            name = parts.hostname or ""
            if not name or "." not in name:
                raise InvalidAddressError(f"invalid gateway address {addr!r}: expected nexus+srv://<region>.<zone>")
            self.srv_name = f"_nexus._tcp.{name}."
            q = parse_qs(parts.query)
            server = dns_server or (q.get("dns") or [""])[0] or os.environ.get(DNS_SERVER_ENV)
            if server:
                self.dns = _parse_dns_server(server, addr)
        elif scheme in ("http", "grpc", "https"):
            self.tls = scheme == "https"
            hostport = rest.rstrip("/")
            if ":" not in hostport:
                raise InvalidAddressError(f"invalid gateway address {addr!r}: missing port")
            self._cache = [Endpoint(hostport, hostport)]
        else:
            raise InvalidAddressError(f"invalid gateway address {addr!r}: unknown scheme {scheme!r}")

    @property
    def is_srv(self) -> bool:
        return self.srv_name is not None

    def forget(self) -> None:
        """Drops the cached answer so that the next round asks DNS again."""
        self._expires = 0.0

    def demote(self, name: str) -> None:
        """Moves a gateway that failed (or that we lost) to the end of the order."""
        hit = [e for e in self._cache if e.name == name]
        self._cache = [e for e in self._cache if e.name != name] + hit

    async def endpoints(self) -> list[Endpoint]:
        """The gateways to try, in order (resolving when the cached answer expired)."""
        self.resolved_now = False
        if not self.is_srv or (self._cache and time.monotonic() < self._expires):
            return list(self._cache)
        self.resolved_now = True
        self._cache, ttl = await self._resolve()
        self._expires = time.monotonic() + ttl
        return list(self._cache)

    async def _resolve(self) -> tuple[list[Endpoint], float]:
        assert self.srv_name is not None
        resolver = dns.asyncresolver.Resolver(configure=self.dns is None)
        if self.dns is not None:
            resolver.nameservers = [self.dns[0]]
            resolver.port = self.dns[1]
        resolver.lifetime = 4.0
        resolver.timeout = 2.0
        server = f"{self.dns[0]}:{self.dns[1]}" if self.dns else "the system resolver"
        try:
            answer = await resolver.resolve(self.srv_name, "SRV")
        except dns.resolver.NXDOMAIN:
            raise DiscoveryError(
                f"{self.srv_name} does not exist (NXDOMAIN from {server}): unknown region or zone, or no live gateway"
            ) from None
        except dns.resolver.NoAnswer:
            raise DiscoveryError(f"{self.srv_name} has no SRV records ({server})") from None
        except dns.exception.DNSException as e:
            raise DiscoveryError(f"looking up {self.srv_name} at {server}: {e}") from e
        glue: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name.to_text(), []).extend(r.address for r in rrset)
        ordered = order_srv(list(answer))
        out = []
        for r in ordered:
            target = r.target.to_text()
            addrs = glue.get(target)
            if not addrs:
                try:
                    a = await resolver.resolve(target, "A")
                    addrs = [x.address for x in a]
                except dns.exception.DNSException:
                    addrs = []
            name = target.split(".")[0]
            for ip in addrs[:1]:
                host = f"[{ip}]" if ":" in ip else ip
                out.append(Endpoint(name, f"{host}:{r.port}"))
        if not out:
            raise DiscoveryError(f"{self.srv_name}: no SRV target resolved to an address")
        ttl = answer.rrset.ttl if answer.rrset is not None else 1
        return out, float(max(1, ttl))
