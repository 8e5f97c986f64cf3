/**
 * Bidirectional streams with credit-based flow control (docs/protocol.md section 8). A side
 * sends `StreamData` only while it holds credit; the receiver grants a window of W frames at
 * the start and W/2 again each time the application consumed W/2, so at most W frames are
 * buffered.
 */
import type { Client } from "./client.js";
import { frame } from "./codec.js";
import { ClosedError, NexusError, fromError } from "./errors.js";
import { type Headers, type HeadersInit, toPairs } from "./headers.js";
import { Message } from "./message.js";
import { AsyncQueue } from "./queue.js";

const END = Symbol("end");

export class BiStream implements AsyncIterable<Message>, AsyncDisposable {
  private creditLeft: number;
  private creditWaiters: (() => void)[] = [];
  private consumed = 0;
  private inbox = new AsyncQueue<Message | typeof END>();
  private error?: NexusError;
  private sentClose = false;
  private peerClosed = false;
  /** @internal Resolves when the peer accepted (first Credit, data or close). */
  readonly opened: Promise<void>;
  private settleOpen!: (e?: NexusError) => void;

  /** @internal */
  constructor(
    private readonly client: Client,
    readonly id: bigint,
    readonly subject: string,
    readonly headers: Headers,
    sendCredit: number,
    private readonly window: number,
  ) {
    this.creditLeft = sendCredit;
    this.opened = new Promise<void>((resolve, reject) => {
      this.settleOpen = (e) => (e ? reject(e) : resolve());
    });
    this.opened.catch(() => undefined);
  }

  /** Frames that may be sent now without waiting. */
  get credit(): number {
    return this.creditLeft;
  }

  /** Sends one frame, waiting until the peer granted credit for it. */
  async send(payload: Buffer | string | Uint8Array, headers?: HeadersInit): Promise<void> {
    const data = typeof payload === "string" ? Buffer.from(payload) : Buffer.from(payload);
    this.client._checkPayload(data);
    while (this.creditLeft <= 0 && !this.error && !this.sentClose) {
      await new Promise<void>((r) => this.creditWaiters.push(r));
    }
    if (this.error) throw this.error;
    if (this.sentClose) throw new ClosedError("stream already finished");
    this.creditLeft -= 1;
    await this.client._enqueue(
      frame({ case: "streamData", value: { streamId: this.id, payload: data, headers: toPairs(headers).map(([key, value]) => ({ key, value })) } }),
      64 + data.length,
    );
  }

  /** Half-closes: this side sends no more data (the peer may still send). */
  async finish(): Promise<void> {
    if (this.sentClose || this.error) return;
    this.sentClose = true;
    this.wake();
    await this.client._enqueue(frame({ case: "streamClose", value: { streamId: this.id } }));
    this.maybeForget();
  }

  /** `await using st = await client.openStream(...)`: finishes the stream at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.finish();
  }

  /** Ends the stream at once in both directions. */
  abort(reason = "aborted"): void {
    if (this.error) return;
    this.fail(new ClosedError(`stream aborted: ${reason}`));
    this.client._enqueueNow(frame({ case: "streamClose", value: { streamId: this.id, error: { code: 5, message: reason, refId: this.id } } }));
  }

  /** The next frame from the peer, or `undefined` once it half-closed; throws if aborted. */
  async recv(): Promise<Message | undefined> {
    const item = await this.inbox.shift();
    if (item === END) {
      this.inbox.pushNow(END);
      if (this.error) throw this.error;
      return undefined;
    }
    this.consumed += 1;
    if (this.consumed >= Math.max(1, Math.floor(this.window / 2)) && !this.peerClosed) {
      const grant = this.consumed;
      this.consumed = 0;
      this.client._enqueueNow(frame({ case: "credit", value: { streamId: this.id, credits: grant } }));
    }
    return item;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Message> {
    for (;;) {
      const m = await this.recv();
      if (m === undefined) return;
      yield m;
    }
  }

  /** @internal */
  _onCredit(n: number): void {
    this.creditLeft += n;
    this.settleOpen();
    this.wake();
  }
  /** @internal */
  _onData(payload: Buffer, headers: Headers): void {
    this.settleOpen();
    this.inbox.pushNow(new Message(this.subject, payload, headers));
  }
  /** @internal */
  _onClose(error: { code?: string | number; message?: string } | null | undefined): void {
    if (error) {
      this.fail(fromError(error, this.subject));
      return;
    }
    this.settleOpen();
    this.peerClosed = true;
    this.inbox.pushNow(END);
    this.maybeForget();
  }
  /** @internal */
  fail(e: NexusError): void {
    if (!this.error) this.error = e;
    this.settleOpen(e);
    this.wake();
    this.inbox.pushNow(END);
    this.client._forgetStream(this.id);
  }
  private wake(): void {
    const w = this.creditWaiters;
    this.creditWaiters = [];
    w.forEach((r) => r());
  }
  private maybeForget(): void {
    if (this.sentClose && this.peerClosed) this.client._forgetStream(this.id);
  }
}

/** Accepts streams opened to a subject: `await accept()` or `for await`. */
export class StreamListener implements AsyncIterable<BiStream>, AsyncDisposable {
  /** @internal */
  readonly queue = new AsyncQueue<BiStream | typeof END>();
  /** @internal */
  constructor(private readonly client: Client, readonly sid: bigint, readonly subject: string, readonly queueGroup: string) {}

  /** The next stream, or `undefined` once the listener is closed. */
  async accept(): Promise<BiStream | undefined> {
    const s = await this.queue.shift();
    if (s === END) {
      this.queue.pushNow(END);
      return undefined;
    }
    return s;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<BiStream> {
    for (;;) {
      const s = await this.accept();
      if (!s) return;
      yield s;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Stops accepting streams. */
  async close(): Promise<void> {
    await this.client._unsubscribe(this.sid);
    this.queue.pushNow(END);
  }
  /** @internal */
  _end(): void {
    this.queue.pushNow(END);
  }
}
