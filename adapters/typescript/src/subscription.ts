/** Subscriptions (bounded buffers of deliveries) and responders (`Service`). */
import type { Client } from "./client.js";
import { ServiceError, TimeoutError } from "./errors.js";
import {
  SPAN_HEADER,
  TRACEPARENT,
  type HeadersInit,
  isForced,
  isValidTraceparent,
  newTraceparent,
  nowUs,
  spanId,
  spanReport,
  toPairs,
  traceContext,
} from "./headers.js";
import type { Message } from "./message.js";
import { AsyncQueue } from "./queue.js";

/** Put after the last message of a subscription. */
export const END: unique symbol = Symbol("end");

/** Payloads the API accepts. */
export type Payload = Buffer | Uint8Array | string;

/** Messages of one subscription: `for await (const m of sub)` or `await sub.next()`. */
export class Subscription implements AsyncIterable<Message>, AsyncDisposable {
  /** @internal */
  readonly queue: AsyncQueue<Message | typeof END>;
  /** Drop notices from the gateway's slow-consumer policy. */
  dropped = 0;
  /** @internal Unsubscribed (deliveries are no longer kept unless draining). */
  closed = false;
  /** @internal Unsubscribed but still keeping what the gateway sent before it knew. */
  draining = false;
  /** @internal Resolves when the subscription ends. */
  readonly ended: Promise<void>;
  private markEnded!: () => void;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly sid: bigint,
    readonly subject: string,
    readonly queueGroup: string,
    capacity: number,
  ) {
    this.queue = new AsyncQueue(capacity);
    this.ended = new Promise((r) => (this.markEnded = r));
  }

  /** The next message, `undefined` once the subscription ended; rejects with TimeoutError after `timeoutMs`. */
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

  /** Stops the subscription at once; buffered messages can still be read. */
  async unsubscribe(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client._unsubscribe(this.sid);
  }

  /**
   * Stops the subscription without losing a message the gateway already sent for it:
   * unsubscribes, waits until the gateway confirmed it, then ends after what is buffered.
   */
  async drain(): Promise<void> {
    await this.client._drainSub(this);
  }

  /** `await using sub = await client.subscribe(...)` unsubscribes at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.unsubscribe();
  }

  /** @internal Whether a delivery arriving now is kept. */
  get accepts(): boolean {
    return !this.closed || this.draining;
  }

  /** @internal */
  _end(): void {
    this.closed = true;
    this.draining = false;
    this.queue.pushNow(END);
    this.markEnded();
  }
}

/** What a handler for {@link Client.serve} returns: the payload, or `{ payload, headers }`. */
export type HandlerResult = Payload | { payload: Payload; headers?: HeadersInit } | void;
/** A handler for {@link Client.serve}. */
export type Handler = (msg: Message) => Promise<HandlerResult>;

/** A responder started by {@link Client.serve}. */
export class Service implements AsyncDisposable {
  private readonly running = new Set<Promise<void>>();
  private readonly loopDone: Promise<void>;

  /** @internal */
  constructor(
    private readonly client: Client,
    private readonly sub: Subscription,
    private readonly handler: Handler,
  ) {
    this.loopDone = this.loop();
  }

  /** The subject (pattern) served. */
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
    // A forced-traced request gets a span of its own for the handler, a child of the
    // request's, reported on the reply (`nexus-span`) for the gateway's trace store.
    const parent = msg.traceparent;
    const traced = isForced(msg.headers) && parent !== undefined && isValidTraceparent(parent);
    const own = traced ? newTraceparent(parent.split("-")[1]) : parent;
    const startedUs = nowUs();
    const t0 = performance.now();
    const spanHeaders = (h: HeadersInit): HeadersInit => {
      if (!traced || !own) return h;
      const took = Math.round((performance.now() - t0) * 1000);
      const report = spanReport("server", `handle ${msg.subject}`, spanId(own), spanId(parent), startedUs, took);
      return [...toPairs(h), [TRACEPARENT, own], [SPAN_HEADER, report]];
    };
    try {
      let result: HandlerResult;
      try {
        result = await traceContext.run(own ?? "", () => this.handler(msg));
      } catch (e) {
        const text = e instanceof ServiceError ? e.message : `${(e as Error).name}: ${(e as Error).message}`;
        await this.client.replyError(msg, text);
        return;
      }
      if (!msg.replyTo) return;
      if (result && typeof result === "object" && "payload" in result && !(result instanceof Uint8Array)) {
        await this.client.reply(msg, result.payload, spanHeaders(result.headers));
      } else {
        await this.client.reply(msg, result ?? Buffer.alloc(0), spanHeaders(undefined));
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

  /** Stops taking requests, answers those already received, then resolves. */
  async drain(): Promise<void> {
    await this.sub.drain();
    await this.loopDone;
    await Promise.allSettled([...this.running]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
