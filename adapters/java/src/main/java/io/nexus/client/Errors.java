package io.nexus.client;

import io.grpc.Status;
import nexus.v1.GatewayOuterClass;

/** Maps gateway Error frames and gRPC statuses to the adapter's exceptions. */
final class Errors {
    private Errors() {}

    static NexusException fromError(GatewayOuterClass.Error e, String subject) {
        String m = e.getMessage();
        switch (e.getCodeValue()) {
            case GatewayOuterClass.ErrorCode.NO_RESPONDERS_VALUE:
                return new NoRespondersException(m.isEmpty() ? "no responders for \"" + subject + "\"" : m);
            case GatewayOuterClass.ErrorCode.TIMEOUT_VALUE:
                return new RequestTimeoutException("request to \"" + subject + "\" timed out: " + m);
            case GatewayOuterClass.ErrorCode.SERVICE_ERROR_VALUE:
                return new ServiceException(m);
            case GatewayOuterClass.ErrorCode.LIMIT_VALUE:
                return new LimitException(m);
            case GatewayOuterClass.ErrorCode.INVALID_VALUE:
                return new InvalidException(m);
            case GatewayOuterClass.ErrorCode.DENIED_VALUE:
                return new DeniedException(m);
            case GatewayOuterClass.ErrorCode.UNAVAILABLE_VALUE:
                return new UnavailableException(m);
            case GatewayOuterClass.ErrorCode.SLOW_CONSUMER_VALUE:
                return new SlowConsumerException(m);
            default:
                return new GatewayException(e.getCodeValue(), m);
        }
    }

    /**
     * What a failed TLS handshake under {@code t} says, the certificate's own problem first
     * (expired, not yet valid), else the innermost TLS message; null when TLS did not fail.
     */
    static String tlsFailure(Throwable t) {
        String tls = null;
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
            if (c instanceof java.security.cert.CertificateExpiredException) {
                return "the gateway's certificate has expired (" + c.getMessage() + ")";
            }
            if (c instanceof java.security.cert.CertificateNotYetValidException) {
                return "the gateway's certificate is not yet valid (" + c.getMessage() + ")";
            }
            if (c instanceof javax.net.ssl.SSLException || c instanceof java.security.cert.CertificateException) {
                tls = c.getMessage();
            }
        }
        return tls;
    }

    static NexusException fromStatus(Throwable t, String address) {
        String tls = tlsFailure(t);
        if (tls != null) {
            return new ConnectFailedException(address + ": TLS handshake failed: " + tls);
        }
        Status s = Status.fromThrowable(t);
        String d = s.getDescription() == null ? s.getCode().name() : s.getDescription();
        if (s.getCause() != null && s.getCause().getMessage() != null) {
            d = d + " (" + s.getCause().getMessage() + ")"; // e.g. "io exception (Connection refused ...)"
        }
        switch (s.getCode()) {
            case UNAUTHENTICATED:
            case PERMISSION_DENIED:
                return new DeniedException(d);
            case INVALID_ARGUMENT:
                return new InvalidException(d);
            case FAILED_PRECONDITION:
                return new ProtocolException(d);
            case RESOURCE_EXHAUSTED:
                return new LimitException(d);
            case UNAVAILABLE:
                if (d.contains("shutting down")) {
                    return new UnavailableException(d);
                }
                return new ConnectFailedException(address + ": " + d);
            default:
                return new ConnectFailedException(address + ": " + s.getCode() + ": " + d);
        }
    }
}
