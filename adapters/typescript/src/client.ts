/**
 * The client: one long-lived gRPC session with a gateway, batching, reconnection and the
 * public Promise / async-iterator API (publish, subscribe, request, serve, streams, drain).
 *
 * Every outgoing frame goes through one bounded queue drained by one writer, which sends all
 * frames already queued as one `Batch` (docs/protocol.md section 15.1): no timer, so a lone
 * frame leaves at once and batches grow under load. A full queue makes `publish` wait, and
 * the writer waits for the HTTP/2 stream to drain, so backpressure reaches the application.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { debuglog } from "node:util";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { type Batch, type Frame, asBuffer, batch, decodeBatch, encodeBatch, frame, pb } from "./codec.js";
import { DEFAULT_THRESHOLD, available, decodeInPlace, encodeFrame } from "./compression.js";
import { type Endpoint, Target } from "./discovery.js";
import {
  ClosedError, ConnectError, DeniedError, DisconnectedError, DiscoveryError, InvalidError, InvalidOptionError, LimitError,
  NexusError, NoGatewayError, ProtocolError, TimeoutError, UnavailableError, fromError,
} from "./errors.js";
import {
  type Headers,
  type HeadersInit,
  SPAN_HEADER,
  TRACEPARENT,
  ensureTraceparent,
  getHeader,
  isForced,
  nowUs,
  spanId,
  spanReport,
  toPairs,
} from "./headers.js";
import { Message, type ServerInfo } from "./message.js";
import { AsyncQueue } from "./queue.js";
import { BiStream, StreamListener } from "./stream.js";
import { validatePattern, validatePublishSubject } from "./subject.js";
import { type Handler, type Payload, Service, Subscription } from "./subscription.js";

export const VERSION = "0.2.0";
const SESSION_METHOD = "/nexus.v1.Gateway/Session";
const MAX_MESSAGE = 64 * 1024 * 1024;

/** Options of {@link Client.connect}. */
export interface ClientOptions {
  /** API key sent in Hello (default: `NEXUS_API_KEY`). */
  apiKey?: string;
  /** Client name reported to the gateway. */
  name?: string;
  /** Default timeout of requests, acknowledgements and stream opens (default 5000). */
  requestTimeoutMs?: number;
  /** Timeout of the TCP connect and the Hello/Welcome handshake (default 5000). */
  connectTimeoutMs?: number;
  /** DNS server for `nexus+srv://` names, `ip[:port]` (else `?dns=`, NEXUS_DNS_SERVER, system). */
  dnsServer?: string;
  /** Reconnect delays: from the first, doubling up to the second, jittered (default [100, 5000]). */
  reconnectBackoffMs?: [number, number];
  /** Most frames per outgoing batch (default 256). */
  maxBatchFrames?: number;
  /** Approximate most bytes per outgoing batch (default 256 KiB). */
  maxBatchBytes?: number;
  /** Capacity of the outgoing queue in frames; a full queue makes `publish` wait (default 1024). */
  outboundCapacity?: number;
  /** Buffered deliveries per subscription; when full the client stops reading (default 1024). */
  subscriptionCapacity?: number;
  /** Receive window of each stream, in frames (default 256). */
  streamWindow?: number;
  /**
   * How long a confirmed publish (`publish(..., { ack: true })`) keeps retrying, with the same
   * message id, after the session was lost before its acknowledgement (default 30000). The
   * gateway de-duplicates the retries on `async` and `sync` routes. 0 turns retrying off.
   */
  publishRetryTimeoutMs?: number;
  /** Check payloads against the gateway's `max_payload` before sending (default true). */
  localPayloadCheck?: boolean;
  /**
   * Codec for outgoing payloads of at least `compressionThreshold` bytes: `"zstd"` (default;
   * used when this Node.js has it and the gateway accepts it) or `null` (plain). Received
   * compressed payloads are always decoded (docs/protocol.md section 9.2).
   */
  compression?: "zstd" | null;
  /** Payloads of at least this many bytes are compressed (default 1024). */
  compressionThreshold?: number;
  /** Connect to discovered gateways (`nexus+srv://`) over TLS too; `https://` always uses TLS. */
  tls?: boolean;
  /** PEM file of the CA(s) to trust for the gateway's certificate (default: Node's roots). */
  tlsCaFile?: string;
  /** PEM client certificate and key, for gateways that require one (`--tls-client-ca`). */
  tlsClientCertFile?: string;
  tlsClientKeyFile?: string;
  /** The name the gateway's certificate must carry, instead of the address's host. */
  tlsServerName?: string;
  /**
   * Where the client reports what it does on its own, such as moving away from a draining
   * gateway (default: `info` to `NODE_DEBUG=nexus`, `warn` to `console.warn`).
   */
  logger?: Logger;
}

/** A sink for the client's log lines. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

const debug = debuglog("nexus");
const defaultLogger: Logger = { info: (m) => debug("%s", m), warn: (m) => console.warn(`nexus-client: ${m}`) };

/**
 * How long a moving client keeps a session after `GoAway{drain_ms}` to let what is in flight
 * finish (docs/protocol.md section 3.4): `drain_ms` minus a 500 ms margin, but at least half
 * of `drain_ms`, so that the session ends before the gateway cuts it.
 */
export function drainWindowMs(drainMs: number): number {
  const total = Math.max(0, drainMs);
  return Math.max(total - 500, total / 2);
}

type TlsOptionNames = "tls" | "tlsCaFile" | "tlsClientCertFile" | "tlsClientKeyFile" | "tlsServerName";
type Settings = Required<Omit<ClientOptions, "dnsServer" | TlsOptionNames>>;

/** Reads a TLS file; a missing one is a ConnectError naming it. */
function readTlsFile(path: string | undefined, what: string): Buffer | null {
  if (path === undefined) return null;
  try {
    return readFileSync(path);
  } catch (e) {
    throw new ConnectError(`cannot read the ${what} file ${path}: ${(e as Error).message}`);
  }
}

function settings(o: ClientOptions): Settings {
  const s: Settings = {
    apiKey: o.apiKey ?? process.env.NEXUS_API_KEY ?? "",
    name: o.name ?? "",
    requestTimeoutMs: o.requestTimeoutMs ?? 5000,
    connectTimeoutMs: o.connectTimeoutMs ?? 5000,
    reconnectBackoffMs: o.reconnectBackoffMs ?? [100, 5000],
    maxBatchFrames: o.maxBatchFrames ?? 256,
    maxBatchBytes: o.maxBatchBytes ?? 256 * 1024,
    outboundCapacity: o.outboundCapacity ?? 1024,
    subscriptionCapacity: o.subscriptionCapacity ?? 1024,
    streamWindow: o.streamWindow ?? 256,
    publishRetryTimeoutMs: o.publishRetryTimeoutMs ?? 30000,
    localPayloadCheck: o.localPayloadCheck ?? true,
    compression: o.compression === undefined ? ("zstd" as const) : o.compression,
    compressionThreshold: o.compressionThreshold ?? DEFAULT_THRESHOLD,
    logger: o.logger ?? defaultLogger,
  };
  for (const k of ["requestTimeoutMs", "connectTimeoutMs", "maxBatchFrames", "maxBatchBytes", "outboundCapacity", "subscriptionCapacity", "streamWindow"] as const) {
    if (!(s[k] > 0)) throw new InvalidOptionError(`${k} must be positive, got ${s[k]}`);
  }
  if (!(s.publishRetryTimeoutMs >= 0)) throw new InvalidOptionError(`publishRetryTimeoutMs must be 0 (off) or positive, got ${s.publishRetryTimeoutMs}`);
  const [lo, hi] = s.reconnectBackoffMs;
  if (!(lo > 0 && lo <= hi)) throw new InvalidOptionError(`reconnectBackoffMs must be [min, max] with 0 < min <= max, got [${lo}, ${hi}]`);
  return s;
}

/**
 * A queued frame. With `endOf` set it is no frame but the point where the writer of that
 * session half-closes it (a move after GoAway): everything queued before still goes out on it.
 */
interface Out {
  frame: Frame | undefined;
  size: number;
  plainPub: boolean;
  endOf?: Session;
}

class Session {
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  /** True once the session is over (ended by either side). */
  ended = false;
  /**
   * Set when the gateway sent GoAway (docs/protocol.md section 3.4): the session only finishes
   * what is on it, and the client moves to another gateway.
   */
  goingAway = false;
  /**
   * Requests delivered on this session and not answered yet: `reply_to` -> the time (ms since
   * the epoch) after which the requester no longer waits. A moving client keeps the session
   * until these are answered, so that the replies go out on it.
   */
  readonly served = new Map<string, number>();
  constructor(
    readonly endpoint: Endpoint,
    readonly channel: grpc.Client,
    readonly call: grpc.ClientDuplexStream<Batch, Batch>,
    readonly info: ServerInfo,
    readonly iter: AsyncIterator<Batch>,
    readonly pending: Frame[],
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  finish(): void {
    this.ended = true;
    this.resolveDone();
  }

  /** Whether a request delivered on this session still waits for our reply (expired ones are dropped). */
  servedPending(): boolean {
    const now = Date.now();
    for (const [replyTo, until] of this.served) if (until <= now) this.served.delete(replyTo);
    return this.served.size > 0;
  }
}

interface Deferred<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

function deferred<T>(): [Promise<T>, Deferred<T>] {
  let d!: Deferred<T>;
  const p = new Promise<T>((resolve, reject) => (d = { resolve, reject }));
  p.catch(() => undefined);
  return [p, d];
}

function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(onTimeout()), ms)))]).finally(() => clearTimeout(t));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ulid(): Buffer {
  const b = Buffer.alloc(16);
  b.writeUIntBE(Date.now() % 2 ** 48, 0, 6);
  randomBytes(10).copy(b, 6);
  return b;
}

function toBuffer(p: Payload | undefined): Buffer {
  if (p === undefined) return Buffer.alloc(0);
  return typeof p === "string" ? Buffer.from(p) : Buffer.from(p.buffer, p.byteOffset, p.byteLength);
}

const wire = (h: Headers) => h.map(([key, value]) => ({ key, value }));
const fromWire = (h: { key: string; value: string }[]): Headers => h.map((x) => [x.key, x.value]);

/** Thrown inside a confirmed publish when no Ack came while the session stayed up: not retried. */
class AckTimeout extends DisconnectedError {}

/**
 * A connection to a Nexus gateway. Create it with `await Client.connect(url, options)`, where
 * `url` is `http://host:port`, `https://host:port` (TLS) or
 * `nexus+srv://<region>.<zone>[?dns=ip:port]`. Supports
 * `await using client = await Client.connect(...)`, which drains at the end of the scope.
 */
export class Client implements AsyncDisposable {
  private readonly target: Target;
  private readonly tlsOptions: Pick<ClientOptions, TlsOptionNames>;
  private readonly opts: Settings;
  private nextId = 1n;
  private readonly out: AsyncQueue<Out>;
  private readonly subs = new Map<bigint, Subscription>();
  private readonly listeners = new Map<bigint, StreamListener>();
  private readonly acks = new Map<bigint, Deferred<number>>();
  private readonly reqs = new Map<bigint, Deferred<pb.Reply>>();
  private readonly pings = new Map<bigint, Deferred<void>>();
  private readonly streams = new Map<bigint, BiStream>();
  private readonly services: Service[] = [];
  private session?: Session;
  private connectedWaiters: (() => void)[] = [];
  private closed = false;
  /** The last error seen while reconnecting. */
  lastError?: Error;

  private constructor(url: string, options: ClientOptions) {
    this.target = new Target(url, options.dnsServer, options.tls ?? false);
    this.tlsOptions = options;
    this.opts = settings(options);
    this.out = new AsyncQueue(this.opts.outboundCapacity);
  }

  /**
   * Connects, trying every discovered gateway, and returns the client. Rejects with
   * DeniedError for a refused API key, DiscoveryError, NoGatewayError or ConnectError.
   */
  static async connect(url: string, options: ClientOptions = {}): Promise<Client> {
    const c = new Client(url, options);
    c.start(await c.connectRound());
    void c.supervise();
    return c;
  }

  private id(): bigint {
    return this.nextId++;
  }

  // === connecting ===

  /**
   * One round: each gateway in order until one accepts a session. When every gateway of a
   * cached SRV answer failed, DNS is asked again at once and the gateways the fresh answer adds
   * are tried in the same round, before the caller backs off.
   */
  private async connectRound(): Promise<Session> {
    let endpoints = await this.target.endpoints();
    let cached = !this.target.resolvedNow;
    const attempts: { gateway: string; error: string }[] = [];
    let last: NexusError | undefined;
    const tried = new Set<string>();
    for (;;) {
      for (const ep of endpoints) {
        tried.add(ep.address);
        try {
          return await this.open(ep);
        } catch (e) {
          last = e instanceof NexusError ? e : new ConnectError(String(e));
          attempts.push({ gateway: `${ep.name} (${ep.address})`, error: last.message });
          this.target.demote(ep.name);
        }
      }
      if (!(this.target.isSrv && cached)) break;
      // Every gateway of a cached answer failed: the answer may be older than the gateways
      // that live now (e.g. one taken while the gateway that just died was the only one up).
      // Ask DNS again at once, and try what it adds, before backing off.
      cached = false;
      this.target.forget();
      try {
        endpoints = (await this.target.endpoints()).filter((ep) => !tried.has(ep.address));
      } catch (e) {
        if (!(e instanceof DiscoveryError)) throw e;
        break;
      }
    }
    if (this.target.isSrv) {
      this.target.forget();
      if (last instanceof DeniedError) throw last;
      throw new NoGatewayError(this.target.url, attempts);
    }
    throw last ?? new ConnectError("no gateway");
  }

  private async open(ep: Endpoint): Promise<Session> {
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": MAX_MESSAGE,
      "grpc.max_send_message_length": MAX_MESSAGE,
      "grpc.enable_retries": 0,
    };
    let credentials = grpc.credentials.createInsecure();
    if (this.target.tls) {
      const t = this.tlsOptions;
      if ((t.tlsClientCertFile === undefined) !== (t.tlsClientKeyFile === undefined)) {
        throw new InvalidOptionError("tlsClientCertFile and tlsClientKeyFile go together");
      }
      credentials = grpc.credentials.createSsl(
        readTlsFile(t.tlsCaFile, "CA"),
        readTlsFile(t.tlsClientKeyFile, "client key"),
        readTlsFile(t.tlsClientCertFile, "client certificate"),
      );
      if (t.tlsServerName) channelOptions["grpc.ssl_target_name_override"] = t.tlsServerName;
    }
    const channel = new grpc.Client(ep.address, credentials, channelOptions);
    try {
      const call = channel.makeBidiStreamRequest<Batch, Batch>(SESSION_METHOD, encodeBatch, decodeBatch);
      call.on("error", () => undefined); // surfaced through the iterator
      const frames: Frame[] = [frame({ case: "hello", value: { apiKey: this.opts.apiKey, clientName: this.opts.name, language: "typescript", version: VERSION, protocol: 1, encodings: available() } })];
      for (const s of this.subs.values()) frames.push(frame({ case: "sub", value: { sid: s.sid, subject: s.subject, queueGroup: s.queueGroup } }));
      for (const l of this.listeners.values()) frames.push(frame({ case: "sub", value: { sid: l.sid, subject: l.subject, queueGroup: l.queueGroup } }));
      call.write(batch(frames));
      const iter = call[Symbol.asyncIterator]() as AsyncIterator<Batch>;
      let first: IteratorResult<Batch>;
      try {
        first = await withTimeout(iter.next(), this.opts.connectTimeoutMs, () => new ConnectError(`${ep.address}: no Welcome within ${this.opts.connectTimeoutMs} ms`));
      } catch (e) {
        if (e instanceof NexusError) throw e;
        throw statusError(e as grpc.ServiceError, ep.address);
      }
      if (first.done) throw new ConnectError(`${ep.address}: the gateway ended the session`);
      let welcome: pb.Welcome | undefined;
      const rest: Frame[] = [];
      for (const f of first.value.frames) {
        if (f.kind.case === "welcome" && !welcome) welcome = f.kind.value;
        else if (f.kind.case === "error" && !welcome) throw fromError(f.kind.value);
        else rest.push(f);
      }
      if (!welcome) throw new ProtocolError("the first frame from the gateway was not Welcome");
      const info: ServerInfo = {
        gatewayId: welcome.gatewayId, region: welcome.region, sessionId: welcome.sessionId,
        maxPayload: Number(welcome.maxPayload), maxSubscriptions: welcome.maxSubscriptions, address: ep.address,
        encodings: [...welcome.encodings],
      };
      return new Session(ep, channel, call, info, iter, rest);
    } catch (e) {
      channel.close();
      throw e;
    }
  }

  private start(s: Session): void {
    // Frames queued for an earlier session carry stale ids; only plain publishes survive.
    this.out.filter((o) => this.stillWanted(o));
    this.session = s;
    void this.writer(s);
    void this.reader(s);
    const w = this.connectedWaiters;
    this.connectedWaiters = [];
    w.forEach((r) => r());
  }

  /** Plain publishes, and operations queued after the old session was failed whose callers still wait. */
  private stillWanted(o: Out): boolean {
    if (o.endOf) return false;
    if (o.plainPub) return true;
    const k = o.frame?.kind;
    switch (k?.case) {
      case "req": return this.reqs.has(k.value.reqId);
      case "ping": return this.pings.has(k.value.nonce);
      case "pub": return this.acks.has(k.value.ackId);
      case "streamOpen": return this.streams.has(k.value.streamId);
      default: return false;
    }
  }

  private async supervise(): Promise<void> {
    const [lo, hi] = this.opts.reconnectBackoffMs;
    while (!this.closed) {
      const s = this.session;
      let moving = false;
      if (s) {
        await s.done;
        if (this.closed) return;
        moving = s.goingAway;
        this.endSession(s, new DisconnectedError("disconnected from the gateway"));
        this.target.demote(s.endpoint.name);
      }
      let delay = lo;
      for (;;) {
        // A move after GoAway connects at once; the backoff is for gateways that failed.
        if (!moving) await sleep(delay / 2 + (Math.random() * delay) / 2);
        moving = false;
        if (this.closed) return;
        try {
          this.start(await this.connectRound());
          break;
        } catch (e) {
          this.lastError = e as Error;
          delay = Math.min(delay * 2, hi);
        }
      }
    }
  }

  private endSession(s: Session, err: NexusError): void {
    if (this.session === s) this.session = undefined;
    s.finish();
    this.out.wakeTakers({ frame: undefined, size: 0, plainPub: false });
    s.call.cancel();
    s.channel.close();
    for (const table of [this.acks, this.reqs, this.pings] as Map<bigint, Deferred<never>>[]) {
      for (const d of table.values()) d.reject(err);
      table.clear();
    }
    for (const st of [...this.streams.values()]) st.fail(err);
    this.streams.clear();
  }

  // === the session's tasks ===

  private async writer(s: Session): Promise<void> {
    const { maxBatchFrames, maxBatchBytes } = this.opts;
    try {
      while (this.session === s) {
        const first = await this.out.shift();
        if (first.endOf) {
          if (first.endOf !== s) continue; // the end of an earlier session, over already
          s.call.end(); // half-close: the gateway ends the session
          return;
        }
        if (!first.frame) return; // woken because the session ended
        if (this.session !== s) {
          this.out.pushNow(first); // the next session decides whether it is still wanted
          return;
        }
        // Let publishers that are running now queue what they have, so that it travels in
        // this batch: one turn of the event loop, no timer.
        if (this.out.length < maxBatchFrames) await new Promise((r) => setImmediate(r));
        const frames = [first.frame];
        let size = first.size;
        let end = false;
        while (frames.length < maxBatchFrames && size < maxBatchBytes) {
          const nxt = this.out.tryShift();
          if (nxt?.endOf) {
            if (nxt.endOf !== s) continue;
            end = true;
            break;
          }
          if (!nxt?.frame) break;
          frames.push(nxt.frame);
          size += nxt.size;
        }
        const accepted = s.info.encodings;
        if (this.opts.compression && accepted.length > 0) {
          for (const f of frames) encodeFrame(f, this.opts.compression, accepted, this.opts.compressionThreshold);
        }
        if (!s.call.write(batch(frames))) {
          await Promise.race([new Promise((r) => s.call.once("drain", r)), s.done]);
        }
        if (end) {
          s.call.end();
          return;
        }
      }
    } catch {
      s.finish();
    }
  }

  private async reader(s: Session): Promise<void> {
    try {
      for (const f of s.pending) await this.dispatch(f, s);
      for (;;) {
        const r = await s.iter.next();
        if (r.done) break;
        for (const f of r.value.frames) await this.dispatch(f, s);
      }
    } catch (e) {
      this.lastError = e as Error;
    }
    s.finish();
  }

  private async dispatch(f: Frame, s: Session): Promise<void> {
    const k = f.kind;
    switch (k.case) {
      case "msg": {
        const m = k.value;
        const sub = this.subs.get(m.sid);
        if (!sub || !sub.accepts) return;
        try {
          decodeInPlace(m, s.info.maxPayload);
        } catch (e) {
          this.opts.logger.warn(`nexus: dropped a message on ${m.subject} whose compressed payload cannot be decoded: ${(e as Error).message}`);
          return;
        }
        // A request (docs/protocol.md section 7.3): its answer is owed on this session.
        if (m.replyTo && m.deadlineMs) s.served.set(m.replyTo, Date.now() + m.deadlineMs);
        // A full buffer stops this reader (backpressure to the gateway) until the
        // application reads, or unsubscribes.
        const msg = new Message(m.subject, asBuffer(m.payload), fromWire(m.headers), m.replyTo, m.id, m.sid, m.deadlineMs);
        await Promise.race([sub.queue.push(msg), sub.ended]);
        return;
      }
      case "reply": {
        const r = k.value;
        if (!r.error) {
          try {
            decodeInPlace(r, s.info.maxPayload);
          } catch (e) {
            r.payload = new Uint8Array();
            r.error = create(pb.ErrorSchema, {
              code: pb.ErrorCode.SERVICE_ERROR,
              message: `the reply's compressed payload cannot be decoded: ${(e as Error).message}`,
              refId: r.reqId,
            });
          }
        }
        this.settle(this.reqs, r.reqId, (d) => d.resolve(r));
        return;
      }
      case "ack":
        this.settle(this.acks, k.value.ackId, (d) => d.resolve(k.value.delivered));
        return;
      case "nack":
        this.settle(this.acks, k.value.ackId, (d) => d.reject(fromError(k.value.error)));
        return;
      case "pong":
        this.settle(this.pings, k.value.nonce, (d) => d.resolve());
        return;
      case "error":
        this.onError(k.value);
        return;
      case "streamOpen":
        this.onStreamOpen(k.value);
        return;
      case "streamData": {
        const st = this.streams.get(k.value.streamId);
        if (!st) return;
        try {
          decodeInPlace(k.value, s.info.maxPayload);
        } catch (e) {
          this.opts.logger.warn(`nexus: dropped stream data whose compressed payload cannot be decoded: ${(e as Error).message}`);
          return;
        }
        st._onData(asBuffer(k.value.payload), fromWire(k.value.headers));
        return;
      }
      case "credit":
        this.streams.get(k.value.streamId)?._onCredit(k.value.credits);
        return;
      case "streamClose":
        this.streams.get(k.value.streamId)?._onClose(k.value.error);
        return;
      case "goAway":
        this.onGoAway(s, k.value);
        return;
    }
  }

  // === moving away from a draining gateway (docs/protocol.md section 3.4) ===

  /**
   * Whether new work (requests, confirmed publishes, subscribes, stream opens, flushes) may
   * start now: a session is open and its gateway is not draining.
   */
  private get accepting(): boolean {
    return !!this.session && !this.session.goingAway;
  }

  /** The gateway of `s` drains: start nothing new on it, demote it, and move (once per session). */
  private onGoAway(s: Session, g: pb.GoAway): void {
    if (s.goingAway || this.session !== s) return;
    s.goingAway = true;
    this.target.demote(s.endpoint.name);
    const windowMs = drainWindowMs(g.drainMs);
    this.opts.logger.info(`gateway ${s.info.gatewayId} (${s.endpoint.address}) is draining (${g.reason || "no reason given"}; drain_ms=${g.drainMs}): moving to another gateway within ${windowMs} ms`);
    void this.move(s, windowMs);
  }

  /** Whether nothing started on `s` waits for an answer (requests, Acks, Pongs, our replies). */
  private idle(s: Session): boolean {
    return this.reqs.size === 0 && this.acks.size === 0 && this.pings.size === 0 && !s.servedPending();
  }

  /**
   * Lets `s` finish what is in flight for up to `windowMs`, then half-closes it after every
   * frame already queued. The supervisor sees the session end, fails what is still unanswered
   * (confirmed publishes are retried) and connects to another gateway at once.
   */
  private async move(s: Session, windowMs: number): Promise<void> {
    const deadline = Date.now() + windowMs;
    while (!s.ended && !this.idle(s) && Date.now() < deadline) await sleep(10);
    if (s.ended) return;
    if (this.idle(s)) this.opts.logger.info(`gateway ${s.info.gatewayId}: nothing in flight any more, ending the session`);
    else this.opts.logger.warn(`gateway ${s.info.gatewayId}: drain window over with work still unanswered; ending the session (handled as on a lost session)`);
    this.out.pushNow({ frame: undefined, size: 0, plainPub: false, endOf: s });
    // The gateway ends the session as soon as it sees the half-close; should that not happen
    // (a writer stuck behind HTTP/2 flow control), give up on the session.
    const timer = setTimeout(() => {
      if (!s.ended) {
        this.opts.logger.warn(`gateway ${s.info.gatewayId}: the session did not end after the half-close; dropping it`);
        s.finish();
      }
    }, Math.max(1000, deadline - Date.now()) + 1000);
    await s.done;
    clearTimeout(timer);
  }

  private settle<T>(table: Map<bigint, Deferred<T>>, id: bigint, f: (d: Deferred<T>) => void): void {
    const d = table.get(id);
    table.delete(id);
    if (d) f(d);
  }

  private onError(e: pb.Error): void {
    const ref = e.refId;
    const err = fromError(e);
    if (this.acks.has(ref)) {
      this.settle(this.acks, ref, (d) => d.reject(err));
    } else if (this.streams.has(ref)) {
      this.streams.get(ref)?.fail(err);
    } else if (this.subs.has(ref)) {
      const sub = this.subs.get(ref) as Subscription;
      if (e.code === pb.ErrorCode.SLOW_CONSUMER) sub.dropped++;
      else {
        sub._end();
        this.subs.delete(ref);
      }
    } else if (err instanceof DeniedError || err instanceof UnavailableError) {
      this.lastError = err;
    }
  }

  private onStreamOpen(o: pb.StreamOpen): void {
    const listener = this.listeners.get(o.sid);
    const st = new BiStream(this, o.streamId, o.subject, fromWire(o.headers), o.credits, this.opts.streamWindow);
    st._onCredit(0);
    if (!listener) {
      st.abort("not listening for streams on this subscription");
      return;
    }
    this.streams.set(o.streamId, st);
    this._enqueueNow(frame({ case: "credit", value: { streamId: o.streamId, credits: this.opts.streamWindow } }));
    listener.queue.pushNow(st);
  }

  // === queueing frames (internal, used by streams and subscriptions) ===

  /** @internal */
  async _enqueue(f: Frame, size = 64, plainPub = false): Promise<void> {
    if (this.closed) throw new ClosedError("client closed");
    await this.out.push({ frame: f, size, plainPub });
  }
  /** @internal Control frames from callbacks: never wait. */
  _enqueueNow(f: Frame): void {
    if (!this.closed) this.out.pushNow({ frame: f, size: 64, plainPub: false });
  }
  /** @internal */
  _forgetStream(id: bigint): void {
    this.streams.delete(id);
  }
  /** @internal */
  _checkPayload(data: Buffer): void {
    const max = this.session?.info.maxPayload;
    if (this.opts.localPayloadCheck && max && data.length > max) {
      throw new LimitError(`payload of ${data.length} bytes exceeds limits.max_payload (${max} bytes)`);
    }
  }
  /** @internal The reply to `request` is queued (or cannot be): a moving session no longer waits for it. */
  _answered(request: Message): void {
    if (request.replyTo) this.session?.served.delete(request.replyTo);
  }
  /** @internal */
  async _unsubscribe(sid: bigint): Promise<void> {
    this.subs.get(sid)?._end();
    this.subs.delete(sid);
    this.listeners.get(sid)?._end();
    this.listeners.delete(sid);
    if (this.session && !this.closed) await this._enqueue(frame({ case: "unsub", value: { sid } }));
  }
  /** @internal */
  async _drainSub(sub: Subscription): Promise<void> {
    if (sub.closed) return;
    sub.closed = sub.draining = true;
    try {
      if (this.accepting && !this.closed) {
        await this._enqueue(frame({ case: "unsub", value: { sid: sub.sid } }));
        // The Pong comes after every Msg the gateway queued before it took the Unsub.
        await this.flush();
      }
    } catch {
      // The session is gone, and with it anything still in flight.
    } finally {
      this.subs.delete(sub.sid);
      sub._end();
    }
  }

  private async awaitAck(frameFor: (ackId: bigint) => Frame, size: number): Promise<number> {
    const ackId = this.id();
    const [p, d] = deferred<number>();
    this.acks.set(ackId, d);
    try {
      await this._enqueue(frameFor(ackId), size);
      return await withTimeout(p, this.opts.requestTimeoutMs + 1000, () => new AckTimeout("no acknowledgement from the gateway"));
    } finally {
      this.acks.delete(ackId);
    }
  }

  /**
   * Waits until a session takes new work (after a reconnect or a move away from a draining
   * gateway). Rejects with DisconnectedError after `ms`, and with ClosedError when the client
   * is closed meanwhile, so that nothing waits on a closed client.
   */
  private async waitConnected(ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (!this.accepting) {
      if (this.closed) throw new ClosedError("client closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new DisconnectedError("not connected to a gateway");
      await withTimeout(new Promise<void>((r) => this.connectedWaiters.push(r)), left, () => new DisconnectedError("not connected to a gateway"));
    }
  }

  /**
   * Sends `pub` with an ack id and waits for the answer. When the session is lost first, sends
   * it again on the next session with the same message id until `publishRetryTimeoutMs` runs
   * out (the gateway de-duplicates by id).
   */
  private async publishConfirmed(pub: Omit<pb.Pub, "ackId" | "$typeName">, size: number): Promise<number> {
    const budget = this.opts.publishRetryTimeoutMs;
    const started = Date.now();
    for (let attempts = 1; ; attempts++) {
      try {
        if (budget > 0 && !this.accepting) await this.waitConnected(Math.max(1, budget - (Date.now() - started)));
        return await this.awaitAck((ackId) => frame({ case: "pub", value: { ...pub, ackId } }), size);
      } catch (e) {
        if (e instanceof AckTimeout || !(e instanceof DisconnectedError)) throw e;
        if (this.closed) throw new ClosedError("client closed");
        const elapsed = Date.now() - started;
        if (budget <= 0 || elapsed >= budget) {
          const why = budget <= 0 ? "retrying is off (publishRetryTimeoutMs = 0)" : `gave up after ${attempts} attempt(s) in ${(elapsed / 1000).toFixed(1)} s (publishRetryTimeoutMs ${budget})`;
          throw new DisconnectedError(`publish to ${JSON.stringify(pub.subject)} not confirmed: the session was lost before the gateway's answer and ${why}; message id ${Buffer.from(pub.id).toString("hex")} may or may not have been delivered`);
        }
      }
    }
  }

  // === public API ===

  /** True while a session with a gateway is open. */
  get isConnected(): boolean {
    return !!this.session;
  }

  /** The gateway in use, or `undefined` while reconnecting. */
  get serverInfo(): ServerInfo | undefined {
    return this.session?.info;
  }

  /**
   * Publishes a message. Without `ack` it resolves once queued (a publish still queued when
   * the session breaks is sent on the next one; one already sent is not repeated). With
   * `ack: true` it waits for the gateway and resolves to the number of subscriptions that
   * received it; if the session breaks first it is sent again with the same message id (see
   * `publishRetryTimeoutMs`).
   */
  async publish(subject: string, payload?: Payload, options: { headers?: HeadersInit; replyTo?: string; ack?: boolean } = {}): Promise<number | undefined> {
    validatePublishSubject(subject);
    const data = toBuffer(payload);
    this._checkPayload(data);
    const headers = wire(ensureTraceparent(toPairs(options.headers)));
    const size = 64 + data.length + subject.length;
    const pub = { subject, replyTo: options.replyTo ?? "", headers: headers as pb.Header[], payload: data, id: ulid() };
    if (options.ack) return this.publishConfirmed(pub, size);
    await this._enqueue(frame({ case: "pub", value: pub }), size, true);
    return undefined;
  }

  /** Subscribes to a pattern (`*` one token, trailing `>` the rest); waits for the gateway's Ack. */
  async subscribe(subject: string, options: { queue?: string } = {}): Promise<Subscription> {
    validatePattern(subject);
    const sid = this.id();
    const sub = new Subscription(this, sid, subject, options.queue ?? "", this.opts.subscriptionCapacity);
    this.subs.set(sid, sub);
    await this.confirmSub(sid, subject, sub.queueGroup);
    return sub;
  }

  /** A queue subscription: each message goes to exactly one member of `queue`. */
  queueSubscribe(subject: string, queue: string): Promise<Subscription> {
    return this.subscribe(subject, { queue });
  }

  private async confirmSub(sid: bigint, subject: string, queueGroup: string): Promise<void> {
    if (!this.accepting) return; // sent with the other subscriptions on the next session
    try {
      await this.awaitAck((ackId) => frame({ case: "sub", value: { sid, subject, queueGroup, ackId } }), 64);
    } catch (e) {
      if (e instanceof DisconnectedError) return;
      this.subs.delete(sid);
      this.listeners.delete(sid);
      throw e;
    }
  }

  /**
   * Sends a request to one responder and resolves to its answer. Rejects with
   * NoRespondersError, TimeoutError, ServiceError, LimitError or DisconnectedError.
   */
  async request(subject: string, payload?: Payload, options: { headers?: HeadersInit; timeoutMs?: number } = {}): Promise<Message> {
    validatePublishSubject(subject);
    const data = toBuffer(payload);
    this._checkPayload(data);
    const timeout = options.timeoutMs ?? this.opts.requestTimeoutMs;
    let pairs = ensureTraceparent(toPairs(options.headers));
    if (isForced(pairs)) {
      // A forced-traced request: this adapter's span (the request's traceparent) is recorded
      // by the gateway with the message's other hops.
      const report = spanReport("client", `request ${subject}`, spanId(getHeader(pairs, TRACEPARENT)), "", nowUs());
      pairs = [...pairs, [SPAN_HEADER, report]];
    }
    const headers = wire(pairs);
    const deadline = Date.now() + timeout;
    await this.waitConnected(timeout).catch((e) => {
      throw e instanceof ClosedError ? e : new TimeoutError(subject, timeout);
    });
    const reqId = this.id();
    const [p, d] = deferred<pb.Reply>();
    this.reqs.set(reqId, d);
    const left = Math.max(1, deadline - Date.now());
    let reply: pb.Reply;
    try {
      await this._enqueue(frame({ case: "req", value: { reqId, subject, headers, payload: data, timeoutMs: left, id: ulid() } }), 64 + data.length);
      reply = await withTimeout(p, left + 1000, () => new TimeoutError(subject, timeout));
    } finally {
      this.reqs.delete(reqId);
    }
    if (reply.error) throw fromError(reply.error, subject, timeout);
    return new Message(subject, asBuffer(reply.payload), fromWire(reply.headers));
  }

  /** Answers a request message. */
  async reply(request: Message, payload?: Payload, headers?: HeadersInit): Promise<void> {
    const data = toBuffer(payload);
    try {
      await this._enqueue(frame({ case: "reply", value: { replyTo: request.replyTo, headers: wire(toPairs(headers)), payload: data } }), 64 + data.length);
    } finally {
      this._answered(request);
    }
  }

  /** Refuses a request; the requester gets a ServiceError with `message`. */
  async replyError(request: Message, message: string): Promise<void> {
    if (!request.replyTo) return;
    try {
      await this._enqueue(frame({ case: "reply", value: { replyTo: request.replyTo, error: { code: pb.ErrorCode.SERVICE_ERROR, message } } }));
    } finally {
      this._answered(request);
    }
  }

  /**
   * Answers requests on `subject` with `handler(msg)`. Throwing (a ServiceError or anything
   * else) answers with an error. Handlers run concurrently, with the request's traceparent
   * as the current trace context.
   */
  async serve(subject: string, handler: Handler, options: { queue?: string } = {}): Promise<Service> {
    const sub = await this.subscribe(subject, options);
    const service = new Service(this, sub, handler);
    this.services.push(service);
    return service;
  }

  /** Opens a bidirectional stream to one responder and waits until it accepted. */
  async openStream(subject: string, options: { headers?: HeadersInit } = {}): Promise<BiStream> {
    validatePublishSubject(subject);
    await this.waitConnected(this.opts.requestTimeoutMs);
    const id = this.id();
    const headers = ensureTraceparent(toPairs(options.headers));
    const st = new BiStream(this, id, subject, headers, 0, this.opts.streamWindow);
    this.streams.set(id, st);
    await this._enqueue(frame({ case: "streamOpen", value: { streamId: id, subject, headers: wire(headers), credits: this.opts.streamWindow } }));
    try {
      await withTimeout(st.opened, this.opts.requestTimeoutMs, () => new TimeoutError(subject, this.opts.requestTimeoutMs));
    } catch (e) {
      if (e instanceof TimeoutError) st.abort("not accepted in time");
      throw e;
    }
    return st;
  }

  /** Accepts streams opened to `subject` (optionally as a member of `queue`). */
  async listenStreams(subject: string, options: { queue?: string } = {}): Promise<StreamListener> {
    validatePattern(subject);
    const sid = this.id();
    const l = new StreamListener(this, sid, subject, options.queue ?? "");
    this.listeners.set(sid, l);
    await this.confirmSub(sid, subject, l.queueGroup);
    return l;
  }

  /** Waits until the gateway processed every frame queued before this call. */
  async flush(timeoutMs?: number): Promise<void> {
    await this.waitConnected(timeoutMs ?? this.opts.requestTimeoutMs);
    const nonce = this.id();
    const [p, d] = deferred<void>();
    this.pings.set(nonce, d);
    try {
      await this._enqueue(frame({ case: "ping", value: { nonce } }));
      await withTimeout(p, timeoutMs ?? this.opts.requestTimeoutMs, () => new DisconnectedError("no Pong from the gateway"));
    } finally {
      this.pings.delete(nonce);
    }
  }

  /**
   * Closes gracefully: stops every subscription without losing what the gateway already sent
   * for it (buffered messages stay readable, then iteration ends), lets responders answer the
   * requests they received, sends everything queued, then closes. Bounded by `timeoutMs`
   * (default: the request timeout). Later calls reject with ClosedError.
   */
  async drain(timeoutMs?: number): Promise<void> {
    if (this.closed) return;
    const work = (async () => {
      await Promise.allSettled(this.services.map((s) => s.drain()));
      await Promise.allSettled([...this.subs.values()].map((s) => s.drain()));
      for (const l of [...this.listeners.values()]) await l.close();
      if (this.session) await this.flush();
    })();
    await withTimeout(work, timeoutMs ?? this.opts.requestTimeoutMs, () => new TimeoutError("drain", timeoutMs ?? this.opts.requestTimeoutMs)).catch(() => undefined);
    await this.close();
  }

  /** Ends the session at once and stops reconnecting; pending operations reject with ClosedError. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.session) this.endSession(this.session, new ClosedError("client closed"));
    for (const s of this.subs.values()) s._end();
    for (const l of this.listeners.values()) l._end();
    const w = this.connectedWaiters;
    this.connectedWaiters = [];
    w.forEach((r) => r());
  }

  /** `await using client = await Client.connect(...)` drains at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.drain();
  }
}

function statusError(e: grpc.ServiceError, address: string): NexusError {
  const details = e.details ?? e.message;
  switch (e.code) {
    case grpc.status.UNAUTHENTICATED:
    case grpc.status.PERMISSION_DENIED:
      return new DeniedError(details);
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidError(details);
    case grpc.status.FAILED_PRECONDITION:
      return new ProtocolError(details);
    case grpc.status.RESOURCE_EXHAUSTED:
      return new LimitError(details);
    case grpc.status.UNAVAILABLE:
      if (/shutting down/.test(details)) return new UnavailableError(details);
      return new ConnectError(`${address}: ${details}`);
    default:
      return new ConnectError(`${address}: ${details}`);
  }
}
