/**
 * The client: one long-lived gRPC session with a gateway, batching, reconnection and the
 * public Promise / async-iterator API (publish, subscribe, request, serve, streams).
 *
 * Every outgoing frame goes through one bounded queue drained by one writer, which sends all
 * frames already queued as one `Batch` (docs/protocol.md section 15.1): no timer, so a lone
 * frame leaves at once and batches grow under load. A full queue makes `publish` wait, and
 * the writer waits for the HTTP/2 stream to drain, so backpressure reaches the application.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import {
  ClosedError, ConnectError, DeniedError, DisconnectedError, InvalidError, LimitError, NexusError,
  NoGatewayError, ProtocolError, ServiceError, TimeoutError, UnavailableError, fromError,
} from "./errors";
import { Headers, HeadersInit, ensureTraceparent, toPairs, traceContext } from "./headers";
import { Message, ServerInfo } from "./message";
import { AsyncQueue } from "./queue";
import { BiStream, StreamListener } from "./stream";
import { validatePattern, validatePublishSubject } from "./subject";
import { Endpoint, Target } from "./discovery";

export const VERSION = "0.1.0";
const SESSION_METHOD = "/nexus.v1.Gateway/Session";
const MAX_MESSAGE = 64 * 1024 * 1024;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Frame = Record<string, any>;

function protoPath(): string {
  const candidates = [
    path.join(__dirname, "..", "proto", "gateway.proto"),
    path.join(__dirname, "..", "..", "..", "proto", "nexus", "v1", "gateway.proto"),
  ];
  const p = candidates.find((c) => fs.existsSync(c));
  if (!p) throw new Error("gateway.proto not found next to the package");
  return p;
}

let codec: { serialize: (v: unknown) => Buffer; deserialize: (b: Buffer) => { frames: Frame[] } } | undefined;
function getCodec() {
  if (!codec) {
    const def = protoLoader.loadSync(protoPath(), {
      keepCase: false, longs: String, enums: String, bytes: Buffer, defaults: true, oneofs: true,
    });
    const session = (def["nexus.v1.Gateway"] as protoLoader.ServiceDefinition).Session;
    codec = {
      serialize: session.requestSerialize as (v: unknown) => Buffer,
      deserialize: session.responseDeserialize as (b: Buffer) => { frames: Frame[] },
    };
  }
  return codec;
}

function ulid(): Buffer {
  const b = Buffer.alloc(16);
  b.writeUIntBE(Date.now() % 2 ** 48, 0, 6);
  randomBytes(10).copy(b, 6);
  return b;
}

function toBuffer(p: Buffer | string | Uint8Array | undefined): Buffer {
  if (p === undefined) return Buffer.alloc(0);
  return typeof p === "string" ? Buffer.from(p) : Buffer.from(p);
}

const wire = (h: Headers) => h.map(([key, value]) => ({ key, value }));
const fromWire = (h: { key: string; value: string }[] | undefined): Headers => (h ?? []).map((x) => [x.key, x.value]);

/** Options of {@link Client.connect}. */
export interface ClientOptions {
  apiKey?: string;
  name?: string;
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** DNS server for `nexus+srv://` names, `ip[:port]` (else `?dns=`, NEXUS_DNS_SERVER, system). */
  dnsServer?: string;
  reconnectBackoffMs?: [number, number];
  maxBatchFrames?: number;
  maxBatchBytes?: number;
  outboundCapacity?: number;
  subscriptionCapacity?: number;
  streamWindow?: number;
}

interface Out {
  frame: Frame;
  size: number;
  plainPub: boolean;
}

const END = Symbol("end");

/** Messages of one subscription: `for await (const m of sub)` or `await sub.next()`. */
export class Subscription implements AsyncIterable<Message> {
  /** @internal */
  readonly queue: AsyncQueue<Message | typeof END>;
  /** Drop notices from the gateway's slow-consumer policy. */
  dropped = 0;
  /** @internal */
  closed = false;
  /** @internal Resolves when the subscription ends. */
  readonly ended: Promise<void>;
  private markEnded!: () => void;
  /** @internal */
  constructor(private readonly client: Client, readonly sid: string, readonly subject: string, readonly queueGroup: string, capacity: number) {
    this.queue = new AsyncQueue(capacity);
    this.ended = new Promise((r) => (this.markEnded = r));
  }
  /** The next message, `undefined` once unsubscribed; rejects with TimeoutError after `timeoutMs`. */
  async next(timeoutMs?: number): Promise<Message | undefined> {
    const m = await this.queue.shift(timeoutMs, () => new TimeoutError(this.subject, timeoutMs ?? 0));
    if (m === END) {
      this.queue.pushNow(END);
      return undefined;
    }
    return m;
  }
  async *[Symbol.asyncIterator](): AsyncIterator<Message> {
    for (;;) {
      const m = await this.next();
      if (!m) return;
      yield m;
    }
  }
  /** Stops the subscription. */
  async unsubscribe(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client._unsubscribe(this.sid);
  }
  /** @internal */
  _end(): void {
    this.closed = true;
    this.queue.pushNow(END);
    this.markEnded();
  }
}

/** A handler for {@link Client.serve}: returns the payload, or `{payload, headers}`. */
export type Handler = (msg: Message) => Promise<Buffer | string | Uint8Array | { payload: Buffer | string | Uint8Array; headers?: HeadersInit } | void>;

/** A responder started by {@link Client.serve}. */
export class Service {
  private running = new Set<Promise<void>>();
  /** @internal */
  constructor(private readonly client: Client, private readonly sub: Subscription, private readonly handler: Handler) {
    void this.loop();
  }
  get subject(): string {
    return this.sub.subject;
  }
  private async loop(): Promise<void> {
    for await (const msg of this.sub) {
      const p = this.handle(msg).finally(() => this.running.delete(p));
      this.running.add(p);
    }
  }
  private async handle(msg: Message): Promise<void> {
    try {
      let result;
      try {
        result = await traceContext.run(msg.traceparent ?? "", () => this.handler(msg));
      } catch (e) {
        const text = e instanceof ServiceError ? e.message : `${(e as Error).name}: ${(e as Error).message}`;
        await this.client.replyError(msg, text);
        return;
      }
      if (!msg.replyTo) return;
      if (result && typeof result === "object" && "payload" in result && !(result instanceof Uint8Array)) {
        await this.client.reply(msg, result.payload, result.headers);
      } else {
        await this.client.reply(msg, (result ?? Buffer.alloc(0)) as Buffer);
      }
    } catch {
      // The session broke; the gateway tells the requester.
    }
  }
  /** Unsubscribes and waits for the handlers in progress. */
  async stop(): Promise<void> {
    await this.sub.unsubscribe();
    await Promise.allSettled([...this.running]);
  }
}

class Session {
  done!: Promise<void>;
  finish!: () => void;
  pending: Frame[] = [];
  constructor(readonly endpoint: Endpoint, readonly channel: grpc.Client, readonly call: grpc.ClientDuplexStream<unknown, { frames: Frame[] }>, readonly info: ServerInfo, readonly iter: AsyncIterator<{ frames: Frame[] }>) {
    this.done = new Promise((r) => (this.finish = r));
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
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(onTimeout()), ms)))]).finally(() => clearTimeout(t));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A connection to a Nexus gateway. Create it with `await Client.connect(url, options)`, where
 * `url` is `http://host:port` or `nexus+srv://<region>.<zone>[?dns=ip:port]`.
 */
export class Client {
  private readonly target: Target;
  private readonly opts: Required<Omit<ClientOptions, "dnsServer">>;
  private nextId = 1n;
  private readonly out: AsyncQueue<Out>;
  private readonly subs = new Map<string, Subscription>();
  private readonly listeners = new Map<string, StreamListener>();
  private readonly acks = new Map<string, Deferred<number>>();
  private readonly reqs = new Map<string, Deferred<Frame>>();
  private readonly pings = new Map<string, Deferred<void>>();
  private readonly streams = new Map<string, BiStream>();
  private session?: Session;
  private connectedWaiters: (() => void)[] = [];
  private closed = false;
  /** The last error seen while reconnecting. */
  lastError?: Error;

  private constructor(url: string, options: ClientOptions) {
    this.target = new Target(url, options.dnsServer);
    this.opts = {
      apiKey: options.apiKey ?? process.env.NEXUS_API_KEY ?? "",
      name: options.name ?? "",
      requestTimeoutMs: options.requestTimeoutMs ?? 5000,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      reconnectBackoffMs: options.reconnectBackoffMs ?? [100, 5000],
      maxBatchFrames: options.maxBatchFrames ?? 256,
      maxBatchBytes: options.maxBatchBytes ?? 256 * 1024,
      outboundCapacity: options.outboundCapacity ?? 1024,
      subscriptionCapacity: options.subscriptionCapacity ?? 1024,
      streamWindow: options.streamWindow ?? 256,
    };
    this.out = new AsyncQueue(this.opts.outboundCapacity);
  }

  /**
   * Connects, trying every discovered gateway, and returns the client. Rejects with
   * DeniedError for a refused API key, DiscoveryError, NoGatewayError or ConnectError.
   */
  static async connect(url: string, options: ClientOptions = {}): Promise<Client> {
    const c = new Client(url, options);
    const s = await c.connectRound();
    c.start(s);
    void c.supervise();
    return c;
  }

  private id(): string {
    return (this.nextId++).toString();
  }

  // === connecting ===

  private async connectRound(): Promise<Session> {
    const endpoints = await this.target.endpoints();
    const attempts: { gateway: string; error: string }[] = [];
    let last: NexusError | undefined;
    for (const ep of endpoints) {
      try {
        return await this.open(ep);
      } catch (e) {
        last = e instanceof NexusError ? e : new ConnectError(String(e));
        attempts.push({ gateway: `${ep.name} (${ep.address})`, error: last.message });
        this.target.demote(ep.name);
      }
    }
    if (this.target.isSrv) {
      this.target.forget();
      if (last instanceof DeniedError && attempts.length === endpoints.length) throw last;
      throw new NoGatewayError(this.target.url, attempts);
    }
    throw last ?? new ConnectError("no gateway");
  }

  private async open(ep: Endpoint): Promise<Session> {
    const { serialize, deserialize } = getCodec();
    const channel = new grpc.Client(ep.address, grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": MAX_MESSAGE,
      "grpc.max_send_message_length": MAX_MESSAGE,
      "grpc.enable_retries": 0,
    });
    try {
      const call = channel.makeBidiStreamRequest(SESSION_METHOD, serialize, deserialize);
      call.on("error", () => undefined); // surfaced through the iterator
      const frames: Frame[] = [{ hello: { apiKey: this.opts.apiKey, clientName: this.opts.name, language: "typescript", version: VERSION, protocol: 1 } }];
      for (const s of this.subs.values()) frames.push({ sub: { sid: s.sid, subject: s.subject, queueGroup: s.queueGroup } });
      for (const l of this.listeners.values()) frames.push({ sub: { sid: l.sid, subject: l.subject, queueGroup: l.queueGroup } });
      call.write({ frames });
      const iter = call[Symbol.asyncIterator]() as AsyncIterator<{ frames: Frame[] }>;
      let first: IteratorResult<{ frames: Frame[] }>;
      try {
        first = await withTimeout(iter.next(), this.opts.connectTimeoutMs, () => new ConnectError(`${ep.address}: no Welcome within ${this.opts.connectTimeoutMs} ms`));
      } catch (e) {
        if (e instanceof NexusError) throw e;
        throw statusError(e as grpc.ServiceError, ep.address);
      }
      if (first.done) throw new ConnectError(`${ep.address}: the gateway ended the session`);
      let welcome: Frame | undefined;
      const rest: Frame[] = [];
      for (const f of first.value.frames) {
        if (f.kind === "welcome" && !welcome) welcome = f.welcome;
        else if (f.kind === "error" && !welcome) {
          call.cancel();
          throw fromError(f.error);
        } else rest.push(f);
      }
      if (!welcome) throw new ProtocolError("the first frame from the gateway was not Welcome");
      const info: ServerInfo = {
        gatewayId: welcome.gatewayId, region: welcome.region, sessionId: welcome.sessionId,
        maxPayload: Number(welcome.maxPayload), maxSubscriptions: welcome.maxSubscriptions, address: ep.address,
      };
      const s = new Session(ep, channel, call, info, iter);
      s.pending = rest;
      return s;
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
    const f = o.frame;
    if (o.plainPub) return true;
    if (f.req) return this.reqs.has(String(f.req.reqId));
    if (f.ping) return this.pings.has(String(f.ping.nonce));
    if (f.pub) return this.acks.has(String(f.pub.ackId));
    if (f.streamOpen) return this.streams.has(String(f.streamOpen.streamId));
    return false;
  }

  private async supervise(): Promise<void> {
    const [lo, hi] = this.opts.reconnectBackoffMs;
    while (!this.closed) {
      const s = this.session;
      if (s) {
        await s.done;
        if (this.closed) return;
        this.endSession(s, new DisconnectedError("disconnected from the gateway"));
        this.target.demote(s.endpoint.name);
      }
      let delay = lo;
      for (;;) {
        await sleep(delay / 2 + (Math.random() * delay) / 2);
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
    this.out.wakeTakers({ frame: undefined as unknown as Frame, size: 0, plainPub: false });
    s.call.cancel();
    s.channel.close();
    for (const table of [this.acks, this.reqs, this.pings] as Map<string, Deferred<never>>[]) {
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
        if (!first.frame) return; // woken because the session ended
        if (this.session !== s) {
          this.out.pushNow(first); // the next session decides whether it is still wanted
          return;
        }
        const frames = [first.frame];
        let size = first.size;
        while (frames.length < maxBatchFrames && size < maxBatchBytes) {
          const nxt = this.out.tryShift();
          if (!nxt) break;
          frames.push(nxt.frame);
          size += nxt.size;
        }
        if (!s.call.write({ frames })) {
          await Promise.race([new Promise((r) => s.call.once("drain", r)), s.done]);
        }
      }
    } catch {
      s.finish();
    }
  }

  private async reader(s: Session): Promise<void> {
    try {
      for (const f of s.pending) await this.dispatch(f);
      for (;;) {
        const r = await s.iter.next();
        if (r.done) break;
        for (const f of r.value.frames) await this.dispatch(f);
      }
    } catch (e) {
      this.lastError = e as Error;
    }
    s.finish();
  }

  private async dispatch(f: Frame): Promise<void> {
    switch (f.kind) {
      case "msg": {
        const m = f.msg;
        const sub = this.subs.get(m.sid);
        if (!sub || sub.closed) return;
        // A full buffer stops this reader (backpressure to the gateway) until the
        // application reads, or unsubscribes.
        await Promise.race([sub.queue.push(new Message(m.subject, m.payload, fromWire(m.headers), m.replyTo, m.id, m.sid, m.deadlineMs)), sub.ended]);
        return;
      }
      case "reply": {
        const d = this.reqs.get(f.reply.reqId);
        this.reqs.delete(f.reply.reqId);
        d?.resolve(f.reply);
        return;
      }
      case "ack": {
        const d = this.acks.get(f.ack.ackId);
        this.acks.delete(f.ack.ackId);
        d?.resolve(f.ack.delivered);
        return;
      }
      case "nack": {
        const d = this.acks.get(f.nack.ackId);
        this.acks.delete(f.nack.ackId);
        d?.reject(fromError(f.nack.error));
        return;
      }
      case "pong": {
        const d = this.pings.get(f.pong.nonce);
        this.pings.delete(f.pong.nonce);
        d?.resolve();
        return;
      }
      case "error":
        this.onError(f.error);
        return;
      case "streamOpen":
        this.onStreamOpen(f.streamOpen);
        return;
      case "streamData":
        this.streams.get(f.streamData.streamId)?._onData(f.streamData.payload, fromWire(f.streamData.headers));
        return;
      case "credit":
        this.streams.get(f.credit.streamId)?._onCredit(f.credit.credits);
        return;
      case "streamClose":
        this.streams.get(f.streamClose.streamId)?._onClose(f.streamClose.error);
        return;
    }
  }

  private onError(e: Frame): void {
    const ref = String(e.refId);
    const err = fromError(e);
    if (this.acks.has(ref)) {
      this.acks.get(ref)?.reject(err);
      this.acks.delete(ref);
    } else if (this.streams.has(ref)) {
      this.streams.get(ref)?.fail(err);
    } else if (this.subs.has(ref)) {
      if (e.code === "SLOW_CONSUMER") (this.subs.get(ref) as Subscription).dropped++;
      else {
        this.subs.get(ref)?._end();
        this.subs.delete(ref);
      }
    } else if (err instanceof DeniedError || err instanceof UnavailableError) {
      this.lastError = err;
    }
  }

  private onStreamOpen(o: Frame): void {
    const listener = this.listeners.get(o.sid);
    const st = new BiStream(this, o.streamId, o.subject, fromWire(o.headers), o.credits, this.opts.streamWindow);
    st._onCredit(0);
    if (!listener) {
      st.abort("not listening for streams on this subscription");
      return;
    }
    this.streams.set(o.streamId, st);
    this._enqueueNow({ credit: { streamId: o.streamId, credits: this.opts.streamWindow } });
    listener.queue.pushNow(st);
  }

  // === queueing frames (internal, used by streams) ===

  /** @internal */
  async _enqueue(frame: Frame, size = 64, plainPub = false): Promise<void> {
    if (this.closed) throw new ClosedError("client closed");
    await this.out.push({ frame, size, plainPub });
  }
  /** @internal Control frames from callbacks: never wait. */
  _enqueueNow(frame: Frame): void {
    if (!this.closed) this.out.pushNow({ frame, size: 64, plainPub: false });
  }
  /** @internal */
  _forgetStream(id: string): void {
    this.streams.delete(id);
  }
  /** @internal */
  _checkPayload(data: Buffer): void {
    const max = this.session?.info.maxPayload;
    if (max && data.length > max) {
      throw new LimitError(`payload of ${data.length} bytes exceeds limits.max_payload (${max} bytes)`);
    }
  }
  /** @internal */
  async _unsubscribe(sid: string): Promise<void> {
    this.subs.get(sid)?._end();
    this.subs.delete(sid);
    this.listeners.get(sid)?._end();
    this.listeners.delete(sid);
    if (this.session && !this.closed) await this._enqueue({ unsub: { sid } });
  }

  private async awaitAck(frameFor: (ackId: string) => Frame, size: number): Promise<number> {
    const ackId = this.id();
    const [p, d] = deferred<number>();
    this.acks.set(ackId, d);
    try {
      await this._enqueue(frameFor(ackId), size);
      return await withTimeout(p, this.opts.requestTimeoutMs + 1000, () => new DisconnectedError("no acknowledgement from the gateway"));
    } finally {
      this.acks.delete(ackId);
    }
  }

  private waitConnected(ms: number): Promise<void> {
    if (this.session) return Promise.resolve();
    return withTimeout(new Promise<void>((r) => this.connectedWaiters.push(r)), ms, () => new DisconnectedError("not connected to a gateway"));
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
   * Publishes a message. With `ack: true` waits for the gateway and resolves to the number
   * of subscriptions that received it; otherwise resolves once queued (resent after a
   * reconnect).
   */
  async publish(subject: string, payload?: Buffer | string | Uint8Array, options: { headers?: HeadersInit; replyTo?: string; ack?: boolean } = {}): Promise<number | undefined> {
    validatePublishSubject(subject);
    const data = toBuffer(payload);
    this._checkPayload(data);
    const headers = wire(ensureTraceparent(toPairs(options.headers)));
    const size = 64 + data.length + subject.length;
    const frame = (ackId = "0"): Frame => ({ pub: { subject, replyTo: options.replyTo ?? "", headers, payload: data, id: ulid(), ackId } });
    if (options.ack) return this.awaitAck(frame, size);
    await this._enqueue(frame(), size, true);
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

  private async confirmSub(sid: string, subject: string, queueGroup: string): Promise<void> {
    if (!this.session) return; // sent with the other subscriptions on the next session
    try {
      await this.awaitAck((ackId) => ({ sub: { sid, subject, queueGroup, ackId } }), 64);
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
  async request(subject: string, payload?: Buffer | string | Uint8Array, options: { headers?: HeadersInit; timeoutMs?: number } = {}): Promise<Message> {
    validatePublishSubject(subject);
    const data = toBuffer(payload);
    this._checkPayload(data);
    const timeout = options.timeoutMs ?? this.opts.requestTimeoutMs;
    const headers = wire(ensureTraceparent(toPairs(options.headers)));
    const deadline = Date.now() + timeout;
    await this.waitConnected(timeout).catch(() => {
      throw new TimeoutError(subject, timeout);
    });
    const reqId = this.id();
    const [p, d] = deferred<Frame>();
    this.reqs.set(reqId, d);
    const left = Math.max(1, deadline - Date.now());
    let reply: Frame;
    try {
      await this._enqueue({ req: { reqId, subject, headers, payload: data, timeoutMs: left, id: ulid() } }, 64 + data.length);
      reply = await withTimeout(p, left + 1000, () => new TimeoutError(subject, timeout));
    } finally {
      this.reqs.delete(reqId);
    }
    if (reply.error) throw fromError(reply.error, subject, timeout);
    return new Message(subject, reply.payload, fromWire(reply.headers));
  }

  /** Answers a request message. */
  async reply(request: Message, payload?: Buffer | string | Uint8Array, headers?: HeadersInit): Promise<void> {
    const data = toBuffer(payload);
    await this._enqueue({ reply: { replyTo: request.replyTo, headers: wire(toPairs(headers)), payload: data } }, 64 + data.length);
  }

  /** Refuses a request; the requester gets a ServiceError with `message`. */
  async replyError(request: Message, message: string): Promise<void> {
    if (!request.replyTo) return;
    await this._enqueue({ reply: { replyTo: request.replyTo, error: { code: 5, message } } });
  }

  /**
   * Answers requests on `subject` with `handler(msg)`. Throwing (a ServiceError or anything
   * else) answers with an error. Handlers run concurrently, with the request's traceparent
   * as the current trace context.
   */
  async serve(subject: string, handler: Handler, options: { queue?: string } = {}): Promise<Service> {
    const sub = await this.subscribe(subject, options);
    return new Service(this, sub, handler);
  }

  /** Opens a bidirectional stream to one responder and waits until it accepted. */
  async openStream(subject: string, options: { headers?: HeadersInit } = {}): Promise<BiStream> {
    validatePublishSubject(subject);
    await this.waitConnected(this.opts.requestTimeoutMs);
    const id = this.id();
    const headers = ensureTraceparent(toPairs(options.headers));
    const st = new BiStream(this, id, subject, headers, 0, this.opts.streamWindow);
    this.streams.set(id, st);
    await this._enqueue({ streamOpen: { streamId: id, subject, headers: wire(headers), credits: this.opts.streamWindow } });
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
    const nonce = this.id();
    const [p, d] = deferred<void>();
    this.pings.set(nonce, d);
    try {
      await this._enqueue({ ping: { nonce } });
      await withTimeout(p, timeoutMs ?? this.opts.requestTimeoutMs, () => new DisconnectedError("no Pong from the gateway"));
    } finally {
      this.pings.delete(nonce);
    }
  }

  /** Ends the session and stops reconnecting; pending operations reject with ClosedError. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.session) this.endSession(this.session, new ClosedError("client closed"));
    for (const s of this.subs.values()) s._end();
    for (const l of this.listeners.values()) l._end();
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
