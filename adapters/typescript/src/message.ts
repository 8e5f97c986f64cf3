/** Messages received from the gateway and information about the session. */
import { Headers, TRACEPARENT, getHeader } from "./headers.js";

/** A delivery: a published message, a request to answer, or one frame of a stream. */
export class Message {
  constructor(
    readonly subject: string,
    readonly payload: Buffer,
    readonly headers: Headers = [],
    /** The inbox to answer for a request, or the publisher's reply_to. */
    readonly replyTo = "",
    /** The 16-byte message id (ULID). */
    readonly id: Uint8Array = new Uint8Array(0),
    /** The subscription id this delivery is for. */
    readonly sid: bigint = 0n,
    /** For requests: milliseconds left before the requester gives up. */
    readonly deadlineMs = 0,
  ) {}
  /** First value of header `key` (case-insensitive). */
  header(key: string): string | undefined {
    return getHeader(this.headers, key);
  }
  /** The W3C traceparent the message carries. */
  get traceparent(): string | undefined {
    return this.header(TRACEPARENT);
  }
  /** True when the sender waits for an answer. */
  get isRequest(): boolean {
    return this.replyTo.startsWith("$nexus.inbox.") && this.deadlineMs > 0;
  }
  /** The payload as UTF-8 text. */
  get text(): string {
    return this.payload.toString("utf8");
  }
}

/** What the gateway said in its Welcome, and where it is. */
export interface ServerInfo {
  gatewayId: string;
  region: string;
  sessionId: string;
  maxPayload: number;
  maxSubscriptions: number;
  address: string;
  /** Payload codecs the gateway accepts (docs/protocol.md section 9.2). */
  encodings: string[];
}
