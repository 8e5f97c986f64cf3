/**
 * Gateway addresses: `http://host:port`, `https://host:port` (TLS) or DNS SRV discovery names
 * `nexus+srv://<region>.<zone>[?dns=ip[:port]]`. SRV records of `_nexus._tcp.<region>.<zone>`
 * are ordered per RFC 2782 (lowest priority first, weighted random within a priority) and
 * each target resolved with an A lookup. The answer is cached for 5 s (Node's resolver does
 * not expose TTLs) or until a round in which no gateway accepted a session. When every gateway
 * of a cached answer failed, the round asks DNS again at once and tries the gateways the fresh
 * answer adds before the client backs off (see Client.connectRound).
 */
import { promises as dns } from "node:dns";
import { DiscoveryError, InvalidAddressError } from "./errors.js";

export const SRV_SCHEME = "nexus+srv";
export const DNS_SERVER_ENV = "NEXUS_DNS_SERVER";
const CACHE_MS = 5000;

/** One gateway to try. */
export interface Endpoint {
  name: string;
  address: string;
}

/**
 * Orders SRV records per RFC 2782: lowest priority first; within a priority, a weighted random
 * order (weight-0 records come after the weighted ones unless all weights are 0).
 */
export function orderSrv<T extends { priority: number; weight: number }>(records: T[], random: () => number = Math.random): T[] {
  const ordered: T[] = [];
  for (const prio of [...new Set(records.map((r) => r.priority))].sort((a, b) => a - b)) {
    const group = records.filter((r) => r.priority === prio);
    while (group.length) {
      const total = group.reduce((s, r) => s + r.weight, 0);
      let pick = Math.floor(random() * group.length);
      if (total > 0) {
        let point = random() * total;
        pick = group.findIndex((r) => r.weight > 0 && (point -= r.weight) <= 0);
        if (pick < 0) pick = group.findIndex((r) => r.weight > 0);
      }
      ordered.push(group.splice(pick, 1)[0]);
    }
  }
  return ordered;
}

export class Target {
  readonly url: string;
  readonly srvName?: string;
  private dnsServer?: string;
  private cache: Endpoint[] = [];
  private expires = 0;
  /** Whether the last endpoints() asked DNS (rather than using the cached answer). */
  resolvedNow = false;

  /** Whether sessions use TLS: `https://`, or `nexus+srv://` with the `tls` option. */
  tls: boolean;

  constructor(addr: string, dnsServer?: string, tls = false) {
    this.url = addr.trim();
    this.tls = tls;
    const idx = this.url.indexOf("://");
    const scheme = idx >= 0 ? this.url.slice(0, idx) : "http";
    const rest = idx >= 0 ? this.url.slice(idx + 3) : this.url;
    if (scheme === SRV_SCHEME) {
      const [name, query = ""] = rest.split("?", 2);
      if (!name || !name.includes(".")) {
        throw new InvalidAddressError(`invalid gateway address ${addr}: expected nexus+srv://<region>.<zone>`);
      }
      this.srvName = `_nexus._tcp.${name.replace(/\/$/, "")}`;
      const q = new URLSearchParams(query);
      this.dnsServer = dnsServer ?? q.get("dns") ?? process.env[DNS_SERVER_ENV] ?? undefined;
    } else if (scheme === "http" || scheme === "grpc" || scheme === "https") {
      this.tls = scheme === "https";
      const hostport = rest.replace(/\/$/, "");
      if (!/:\d+$/.test(hostport)) throw new InvalidAddressError(`invalid gateway address ${addr}: missing port`);
      this.cache = [{ name: hostport, address: hostport }];
    } else {
      throw new InvalidAddressError(`invalid gateway address ${addr}: unknown scheme ${scheme}`);
    }
  }

  get isSrv(): boolean {
    return this.srvName !== undefined;
  }

  /** Drops the cached answer so that the next round asks DNS again. */
  forget(): void {
    this.expires = 0;
  }

  /** Moves a gateway that failed (or was lost) to the end of the order. */
  demote(name: string): void {
    this.cache = [...this.cache.filter((e) => e.name !== name), ...this.cache.filter((e) => e.name === name)];
  }

  /** The gateways to try, in order. */
  async endpoints(): Promise<Endpoint[]> {
    this.resolvedNow = false;
    if (!this.isSrv || (this.cache.length && Date.now() < this.expires)) return [...this.cache];
    this.resolvedNow = true;
    this.cache = await this.resolve();
    this.expires = Date.now() + CACHE_MS;
    return [...this.cache];
  }

  private async resolve(): Promise<Endpoint[]> {
    const resolver = new dns.Resolver({ timeout: 2000, tries: 2 });
    if (this.dnsServer) resolver.setServers([this.dnsServer]);
    const server = this.dnsServer ?? "the system resolver";
    let records: { name: string; port: number; priority: number; weight: number }[];
    try {
      records = await resolver.resolveSrv(this.srvName as string);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "ENOTFOUND") {
        throw new DiscoveryError(`${this.srvName} does not exist (NXDOMAIN from ${server}): unknown region or zone, or no live gateway`);
      }
      if (code === "ENODATA") throw new DiscoveryError(`${this.srvName} has no SRV records (${server})`);
      throw new DiscoveryError(`looking up ${this.srvName} at ${server}: ${(e as Error).message}`);
    }
    const ordered = orderSrv(records);
    const out: Endpoint[] = [];
    for (const r of ordered) {
      let ip: string | undefined;
      try {
        ip = (await resolver.resolve4(r.name))[0];
      } catch {
        try {
          const v6 = (await resolver.resolve6(r.name))[0];
          ip = v6 ? `[${v6}]` : undefined;
        } catch {
          ip = undefined;
        }
      }
      if (ip) out.push({ name: r.name.split(".")[0], address: `${ip}:${r.port}` });
    }
    if (!out.length) throw new DiscoveryError(`${this.srvName}: no SRV target resolved to an address`);
    return out;
  }
}
