package io.nexus.client;

import io.netty.handler.codec.http2.Http2SecurityUtil;
import io.netty.handler.ssl.JdkApplicationProtocolNegotiator;
import io.netty.handler.ssl.JdkSslClientContext;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SupportedCipherSuiteFilter;
import java.io.File;
import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;
import java.util.List;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLHandshakeException;

/**
 * The TLS context of gateway sessions: the JDK's TLS, negotiating HTTP/2 with ALPN ("h2"), as
 * gRPC over TLS requires.
 *
 * <p>Upstream Netty 4.1 negotiates ALPN with the JDK's own TLS on Java 9+ (its
 * {@code Java9SslEngine}, chosen by {@code JdkAlpnApplicationProtocolNegotiator}), and
 * {@code GrpcSslContexts.forClient()} is all it takes. Debian's Netty 4.1.48 build removes
 * {@code JdkAlpnApplicationProtocolNegotiator} (it also drives the Jetty ALPN agent, which Debian
 * does not package) and makes every ALPN configuration of the JDK provider throw
 * {@code UnsupportedOperationException: JDK provider does not support ALPN protocol}; but it keeps
 * {@code Java9SslEngine}, which speaks ALPN through {@code SSLEngine.setApplicationProtocols} and
 * {@code getApplicationProtocol}. So: the standard gRPC context where Netty can build one, else a
 * JDK context whose engines are Netty's own {@code Java9SslEngine}, reached by reflection (the
 * class is package-private; automatic modules and the class path both allow it) with a negotiator
 * that offers only "h2" and fails the handshake unless the gateway selects it.
 */
final class Tls {
    private Tls() {}

    private static final List<String> H2 = List.of("h2");

    /** {@code Java9SslEngine(SSLEngine, JdkApplicationProtocolNegotiator, boolean isServer)}, or why not. */
    private static final Object JAVA9_ENGINE = java9Engine();

    @SuppressWarnings("deprecation") // JdkApplicationProtocolNegotiator: Netty deprecates it, and Java9SslEngine takes it
    private static Object java9Engine() {
        try {
            Constructor<?> c = Class.forName("io.netty.handler.ssl.Java9SslEngine")
                    .getDeclaredConstructor(SSLEngine.class, JdkApplicationProtocolNegotiator.class, boolean.class);
            c.setAccessible(true);
            return c;
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return "Netty's Java9SslEngine cannot be used (" + e + ")";
        }
    }

    /**
     * A client context trusting {@code ca} (else the JDK's trust store) and presenting
     * {@code cert}/{@code key} (PEM chain and PKCS#8 PEM key) when given.
     *
     * @throws SSLException when a file cannot be parsed or no ALPN is to be had
     */
    static SslContext clientContext(File ca, File cert, File key) throws SSLException {
        try {
            io.netty.handler.ssl.SslContextBuilder b = io.grpc.netty.GrpcSslContexts.forClient();
            if (ca != null) {
                b.trustManager(ca);
            }
            if (cert != null) {
                b.keyManager(cert, key);
            }
            return b.build();
        } catch (UnsupportedOperationException e) {
            // Debian's Netty: ALPN only through Java9SslEngine, below.
        }
        if (!(JAVA9_ENGINE instanceof Constructor<?>)) {
            throw new SSLException("gRPC over TLS needs ALPN (h2): this Netty's JDK provider has none and " + JAVA9_ENGINE);
        }
        return newJdkContext(ca, cert, key);
    }

    @SuppressWarnings("deprecation") // the only public way to give Netty's JDK context a negotiator
    private static SslContext newJdkContext(File ca, File cert, File key) throws SSLException {
        return new JdkSslClientContext(ca, null, cert, key, null, null, Http2SecurityUtil.CIPHERS,
                SupportedCipherSuiteFilter.INSTANCE, new H2Negotiator(), 0, 0);
    }

    /** Offers "h2" and accepts nothing else; engines are Netty's Java9SslEngine. */
    @SuppressWarnings("deprecation")
    private static final class H2Negotiator implements JdkApplicationProtocolNegotiator {
        @Override
        public SslEngineWrapperFactory wrapperFactory() {
            return (engine, negotiator, isServer) -> {
                try {
                    return (SSLEngine) ((Constructor<?>) JAVA9_ENGINE).newInstance(engine, negotiator, isServer);
                } catch (InvocationTargetException e) {
                    Throwable cause = e.getCause();
                    throw cause instanceof RuntimeException r ? r : new IllegalStateException("TLS engine: " + cause, cause);
                } catch (ReflectiveOperationException e) {
                    throw new IllegalStateException("TLS engine: " + e, e);
                }
            };
        }

        @Override
        public ProtocolSelectorFactory protocolSelectorFactory() {
            return (engine, supported) -> {
                throw new UnsupportedOperationException("the Nexus client does not serve TLS");
            };
        }

        @Override
        public ProtocolSelectionListenerFactory protocolListenerFactory() {
            return (engine, supported) -> new ProtocolSelectionListener() {
                @Override
                public void unsupported() {
                    // Java9SslEngine turns this into the handshake's SSLHandshakeException.
                    throw new IllegalStateException("the gateway negotiated no application protocol (ALPN), gRPC needs h2");
                }

                @Override
                public void selected(String protocol) throws Exception {
                    if (!supported.contains(protocol)) {
                        throw new SSLHandshakeException("the gateway chose the application protocol " + protocol + ", gRPC needs h2");
                    }
                }
            };
        }

        @Override
        public List<String> protocols() {
            return H2;
        }
    }
}
