/** Error classes of the TypeScript adapter and the mapping from gateway error codes. */

/** Base class of every error the adapter throws. */
export class NexusError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
/** The subject or pattern is malformed or reserved (checked locally before sending). */
export class InvalidSubjectError extends NexusError {
  constructor(readonly subject: string, readonly reason: string) {
    super(`invalid subject ${JSON.stringify(subject)}: ${reason}`);
  }
}
/** The gateway address or discovery name is malformed. */
export class InvalidAddressError extends NexusError {}
/** No subscription matched a request or stream open. */
export class NoRespondersError extends NexusError {
  constructor(readonly subject: string, detail = "") {
    super(detail || `no responders for ${JSON.stringify(subject)}`);
  }
}
/** A request got no answer in time. */
export class TimeoutError extends NexusError {
  constructor(readonly subject: string, readonly afterMs: number) {
    super(`request to ${JSON.stringify(subject)} timed out after ${afterMs} ms`);
  }
}
/** The responder refused the request or vanished; handlers throw it to answer with an error. */
export class ServiceError extends NexusError {}
/** A configured limit was hit (payload size, subscriptions, credit...). */
export class LimitError extends NexusError {}
/** The gateway considered a frame or field malformed. */
export class InvalidError extends NexusError {}
/** Authentication or authorization failure. */
export class DeniedError extends NexusError {}
/** The gateway is shutting down. */
export class UnavailableError extends NexusError {}
/** A receiver did not keep up: messages were dropped or a stream aborted. */
export class SlowConsumerError extends NexusError {}
/** Any other gateway error code. */
export class GatewayError extends NexusError {
  constructor(readonly code: number, message: string) {
    super(`gateway error ${code}: ${message}`);
  }
}
/** The gateway did not follow the protocol. */
export class ProtocolError extends NexusError {}
/**
 * The session broke while the operation was in flight; the client reconnects on its own. A
 * confirmed publish fails with it only after its retries ran out ("not confirmed").
 */
export class DisconnectedError extends NexusError {}
/** An option of `Client.connect` is out of range; the message names it. */
export class InvalidOptionError extends NexusError {}
/** The client (or this handle) was closed. */
export class ClosedError extends NexusError {}
/** Connecting to a gateway failed. */
export class ConnectError extends NexusError {}
/** DNS SRV discovery failed (NXDOMAIN, no records, no answer). */
export class DiscoveryError extends NexusError {}
/** Every discovered gateway was tried and none accepted a session. */
export class NoGatewayError extends NexusError {
  constructor(readonly target: string, readonly attempts: { gateway: string; error: string }[]) {
    super(
      `no gateway for ${target} accepted a session: ` +
        (attempts.map((a) => `${a.gateway}: ${a.error}`).join("; ") || "no gateway to try"),
    );
  }
}

/** nexus.v1.ErrorCode values. */
export const ErrorCode = {
  UNSPECIFIED: 0, INVALID: 1, LIMIT: 2, NO_RESPONDERS: 3, TIMEOUT: 4,
  SERVICE_ERROR: 5, DENIED: 6, SLOW_CONSUMER: 7, UNAVAILABLE: 8,
} as const;

const CODES: Record<string, number> = {
  ERROR_CODE_UNSPECIFIED: 0, INVALID: 1, LIMIT: 2, NO_RESPONDERS: 3, TIMEOUT: 4,
  SERVICE_ERROR: 5, DENIED: 6, SLOW_CONSUMER: 7, UNAVAILABLE: 8,
};

/** Maps a gateway `Error` (decoded by protobuf-es: the code is a number; a name is accepted too) to the matching exception. */
export function fromError(err: { code?: string | number; message?: string } | null | undefined, subject = "", timeoutMs = 0): NexusError {
  const code = typeof err?.code === "string" ? (CODES[err.code] ?? 0) : Number(err?.code ?? 0);
  const message = err?.message ?? "";
  switch (code) {
    case ErrorCode.NO_RESPONDERS: return new NoRespondersError(subject, message);
    case ErrorCode.TIMEOUT: return new TimeoutError(subject, timeoutMs);
    case ErrorCode.SERVICE_ERROR: return new ServiceError(message);
    case ErrorCode.LIMIT: return new LimitError(message);
    case ErrorCode.INVALID: return new InvalidError(message);
    case ErrorCode.DENIED: return new DeniedError(message);
    case ErrorCode.UNAVAILABLE: return new UnavailableError(message);
    case ErrorCode.SLOW_CONSUMER: return new SlowConsumerError(message);
    default: return new GatewayError(code, message);
  }
}
