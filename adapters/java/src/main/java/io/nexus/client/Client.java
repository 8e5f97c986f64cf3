package io.nexus.client;

import com.google.protobuf.ByteString;
import io.grpc.ManagedChannel;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.LinkedBlockingDeque;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;
import nexus.v1.GatewayGrpc;
import nexus.v1.GatewayOuterClass.Batch;
import nexus.v1.GatewayOuterClass.Credit;
import nexus.v1.GatewayOuterClass.Error;
import nexus.v1.GatewayOuterClass.ErrorCode;
import nexus.v1.GatewayOuterClass.Frame;
import nexus.v1.GatewayOuterClass.GoAway;
import nexus.v1.GatewayOuterClass.Header;
import nexus.v1.GatewayOuterClass.Hello;
import nexus.v1.GatewayOuterClass.Ping;
import nexus.v1.GatewayOuterClass.Pub;
import nexus.v1.GatewayOuterClass.Reply;
import nexus.v1.GatewayOuterClass.Req;
import nexus.v1.GatewayOuterClass.StreamOpen;
import nexus.v1.GatewayOuterClass.Sub;
import nexus.v1.GatewayOuterClass.Unsub;
import nexus.v1.GatewayOuterClass.Welcome;

/**
 * A connection to a Nexus gateway: one long-lived gRPC session (by address, or discovered
 * through DNS SRV with {@code nexus+srv://<region>.<zone>}), with batching, reconnection and
 * re-subscription. Create it with {@code Client.builder(url)...connect()} or
 * {@link #connect(String)}.
 *
 * <p>Every outgoing frame goes through one bounded queue drained by one writer thread, which
 * sends all frames already queued as one Batch (docs/protocol.md section 15.1): a lone frame
 * leaves at once and batches grow by themselves under load. Incoming batches are requested one
 * at a time and dispatched by one reader thread, so a full subscription buffer stops reading
 * and HTTP/2 flow control pushes back on the gateway.
 */
public final class Client implements AutoCloseable {
    /** The adapter version sent in Hello. */
    public static final String VERSION = "0.1.0";
    private static final int MAX_MESSAGE = 64 * 1024 * 1024;
    /** How many times the writer yields to publishers before sending a batch that could grow. */
    private static final int WRITER_YIELDS = 16;
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final Object END = new Object();
    private static final System.Logger LOG = System.getLogger("io.nexus.client");
    /**
     * How long before a draining gateway's {@code drain_ms} runs out a moving client ends the
     * session at the latest (at most half of {@code drain_ms}), so that it is not cut.
     */
    static final long GOAWAY_MARGIN_MS = 500;

    /** Options; see the setters. */
    public static final class Builder {
        private final String url;
        private String apiKey = System.getenv().getOrDefault("NEXUS_API_KEY", "");
        private String name = "";
        private String dnsServer;
        private boolean tls;
        private java.io.File tlsCaFile;
        private java.io.File tlsClientCert;
        private java.io.File tlsClientKey;
        private String tlsServerName;
        private Duration requestTimeout = Duration.ofSeconds(5);
        private Duration connectTimeout = Duration.ofSeconds(5);
        private Duration backoffMin = Duration.ofMillis(100);
        private Duration backoffMax = Duration.ofSeconds(5);
        private int maxBatchFrames = 256;
        private int maxBatchBytes = 256 * 1024;
        private int outboundCapacity = 1024;
        private int subscriptionCapacity = 1024;
        private int streamWindow = 256;
        private Duration publishRetryTimeout = Duration.ofSeconds(30);
        private boolean localPayloadCheck = true;
        private String compression = "zstd";
        private int compressionThreshold = Compression.DEFAULT_THRESHOLD;

        private Builder(String url) {
            this.url = url;
        }

        /**
         * API key sent in Hello (default: {@code NEXUS_API_KEY}, else none).
         *
         * @param k the key, {@code null} for none
         * @return this builder
         */
        public Builder apiKey(String k) {
            apiKey = k == null ? "" : k;
            return this;
        }

        /**
         * Client name reported to the gateway (default empty).
         *
         * @param n the name
         * @return this builder
         */
        public Builder name(String n) {
            name = n;
            return this;
        }

        /** DNS server for nexus+srv names, {@code ip[:port]}. */
        public Builder dnsServer(String s) {
            dnsServer = s;
            return this;
        }

        /**
         * Default timeout of requests, acknowledgements, flushes and stream opens (default 5 s).
         *
         * @param d the timeout
         * @return this builder
         */
        public Builder requestTimeout(Duration d) {
            requestTimeout = d;
            return this;
        }

        /**
         * How long to wait for a gateway's Welcome after sending Hello, per gateway tried (default 5 s).
         *
         * @param d the timeout
         * @return this builder
         */
        public Builder connectTimeout(Duration d) {
            connectTimeout = d;
            return this;
        }

        /**
         * Reconnection backoff: starts at {@code min}, doubles up to {@code max}, with jitter
         * (default 100 ms to 5 s).
         *
         * @param min the first delay
         * @param max the largest delay
         * @return this builder
         */
        public Builder reconnectBackoff(Duration min, Duration max) {
            backoffMin = min;
            backoffMax = max;
            return this;
        }

        /**
         * The largest batch the writer sends as one gRPC message (default 256 frames, 256 KiB).
         *
         * @param frames frames per batch at most
         * @param bytes bytes per batch at most
         * @return this builder
         */
        public Builder maxBatch(int frames, int bytes) {
            maxBatchFrames = frames;
            maxBatchBytes = bytes;
            return this;
        }

        /**
         * Frames the outbound queue holds before {@code publish} blocks (default 1024).
         *
         * @param n frames
         * @return this builder
         */
        public Builder outboundCapacity(int n) {
            outboundCapacity = n;
            return this;
        }

        /**
         * Messages each subscription buffers before the client stops reading from the gateway
         * (default 1024).
         *
         * @param n messages
         * @return this builder
         */
        public Builder subscriptionCapacity(int n) {
            subscriptionCapacity = n;
            return this;
        }

        /**
         * Receive window of each stream, in frames (default 256).
         *
         * @param n frames
         * @return this builder
         */
        public Builder streamWindow(int n) {
            streamWindow = positive("streamWindow", n);
            return this;
        }

        /**
         * How long a confirmed publish ({@link Client#publishAcked}) keeps retrying, with the
         * same message id, after the session was lost before the gateway's answer (default
         * 30 s). The gateway de-duplicates the retries on {@code async} and {@code sync}
         * routes. {@link Duration#ZERO} turns retrying off.
         *
         * @param d the retry budget
         * @return this builder
         */
        public Builder publishRetryTimeout(Duration d) {
            if (d == null || d.isNegative()) {
                throw new IllegalArgumentException("publishRetryTimeout must be zero (off) or positive, got " + d);
            }
            publishRetryTimeout = d;
            return this;
        }

        /**
         * Whether payloads are checked against the gateway's {@code max_payload} before
         * sending (default true). With false the gateway's own check answers, with the same
         * {@link LimitException}.
         *
         * @param on whether to check locally
         * @return this builder
         */
        public Builder localPayloadCheck(boolean on) {
            localPayloadCheck = on;
            return this;
        }

        /**
         * The codec outgoing payloads of at least {@link #compressionThreshold(int)} bytes are
         * compressed with (docs/protocol.md section 9.2): {@code "zstd"} (default), {@code "lz4"},
         * or {@code null} for plain payloads. Used when its library (zstd-jni, lz4-java) is on the
         * classpath and the gateway accepts it; received compressed payloads are always decoded,
         * so applications only ever see plain payloads.
         *
         * @param codec {@code "zstd"}, {@code "lz4"} or {@code null}
         * @return this builder
         */
        public Builder compression(String codec) {
            if (codec != null && !codec.equals("zstd") && !codec.equals("lz4")) {
                throw new IllegalArgumentException("compression must be \"zstd\", \"lz4\" or null, not \"" + codec + "\"");
            }
            compression = codec;
            return this;
        }

        /**
         * Payloads of at least this many bytes are compressed (default 1024).
         *
         * @param bytes the threshold
         * @return this builder
         */
        public Builder compressionThreshold(int bytes) {
            if (bytes < 0) {
                throw new IllegalArgumentException("compressionThreshold must be >= 0, got " + bytes);
            }
            compressionThreshold = bytes;
            return this;
        }

        /**
         * Connects to discovered gateways ({@code nexus+srv://}) over TLS too; an
         * {@code https://} address always uses TLS.
         *
         * @param on whether to use TLS with discovered gateways
         * @return this builder
         */
        public Builder tls(boolean on) {
            tls = on;
            return this;
        }

        /**
         * Trusts the CA certificates in this PEM file for the gateway's certificate, instead of
         * the JDK's trust store.
         *
         * @param path the PEM file
         * @return this builder
         */
        public Builder tlsCaFile(String path) {
            tlsCaFile = new java.io.File(path);
            return this;
        }

        /**
         * Presents this client certificate (PEM chain, PKCS#8 PEM key) to a gateway that
         * requires one ({@code --tls-client-ca}).
         *
         * @param cert the certificate chain file
         * @param key the private key file
         * @return this builder
         */
        public Builder tlsClientCertFiles(String cert, String key) {
            tlsClientCert = new java.io.File(cert);
            tlsClientKey = new java.io.File(key);
            return this;
        }

        /**
         * The name the gateway's certificate must carry, instead of the address's host.
         *
         * @param name a DNS name in the certificate
         * @return this builder
         */
        public Builder tlsServerName(String name) {
            tlsServerName = name;
            return this;
        }

        private static int positive(String name, int n) {
            if (n <= 0) {
                throw new IllegalArgumentException(name + " must be positive, got " + n);
            }
            return n;
        }

        /**
         * Connects, trying every discovered gateway. Throws DeniedException for a refused API
         * key, DiscoveryException, NoGatewayException or ConnectFailedException.
         */
        public Client connect() {
            Client c = new Client(this);
            c.start(c.connectRound());
            c.supervisor.start();
            return c;
        }
    }

    /**
     * A queued frame; plain publishes survive a reconnect, everything else is per session. With
     * {@code endOf} set it is no frame but the point where the writer of that session half-closes
     * it (a move after GoAway): everything queued before still goes out on it.
     */
    private record Out(Frame frame, int size, boolean plainPub, Session endOf) {
        Out(Frame frame, int size, boolean plainPub) {
            this(frame, size, plainPub, null);
        }
    }

    /** One gRPC Session call with one gateway. */
    private final class Session implements ClientResponseObserver<Batch, Batch> {
        final Discovery.Endpoint endpoint;
        final ManagedChannel channel;
        final LinkedBlockingQueue<Object> inbound = new LinkedBlockingQueue<>();
        final CountDownLatch done = new CountDownLatch(1);
        final Object readyLock = new Object();
        volatile ClientCallStreamObserver<Batch> requests;
        volatile ServerInfo info;
        volatile boolean ended;
        final List<Frame> pending = new ArrayList<>();
        /**
         * Set when the gateway sent GoAway (docs/protocol.md section 3.4): the session only
         * finishes what is on it, and the client moves to another gateway.
         */
        volatile boolean goingAway;
        /**
         * Requests delivered on this session and not answered yet: {@code reply_to} -> the time
         * (ms since the epoch) after which the requester no longer waits. A moving client keeps
         * the session until these are answered, so that the replies go out on it.
         */
        final Map<String, Long> served = new ConcurrentHashMap<>();

        Session(Discovery.Endpoint endpoint, ManagedChannel channel) {
            this.endpoint = endpoint;
            this.channel = channel;
        }

        @Override
        public void beforeStart(ClientCallStreamObserver<Batch> r) {
            requests = r;
            r.disableAutoRequestWithInitial(1);
            r.setOnReadyHandler(() -> {
                synchronized (readyLock) {
                    readyLock.notifyAll();
                }
            });
        }

        @Override
        public void onNext(Batch b) {
            inbound.add(b);
        }

        @Override
        public void onError(Throwable t) {
            inbound.add(t);
        }

        @Override
        public void onCompleted() {
            inbound.add(END);
        }

        /** Whether a request delivered on this session still waits for our reply (expired ones are dropped). */
        boolean servedPending() {
            long now = System.currentTimeMillis();
            served.values().removeIf(until -> until <= now);
            return !served.isEmpty();
        }

        void finish() {
            ended = true;
            done.countDown();
            synchronized (readyLock) {
                readyLock.notifyAll();
            }
        }
    }

    private final Builder opts;
    private final Discovery target;
    private final AtomicLong ids = new AtomicLong(1);
    private final LinkedBlockingDeque<Out> out;
    private final Map<Long, Subscription> subs = new ConcurrentHashMap<>();
    private final Map<Long, StreamListener> listeners = new ConcurrentHashMap<>();
    private final Map<Long, CompletableFuture<Integer>> acks = new ConcurrentHashMap<>();
    private final Map<Long, CompletableFuture<Reply>> reqs = new ConcurrentHashMap<>();
    private final Map<Long, CompletableFuture<Void>> pings = new ConcurrentHashMap<>();
    private final Map<Long, BiStream> streams = new ConcurrentHashMap<>();
    private final List<Service> services = new java.util.concurrent.CopyOnWriteArrayList<>();
    private final ExecutorService handlers = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "nexus-handler");
        t.setDaemon(true);
        return t;
    });
    private final Object connectedLock = new Object();
    private final Thread supervisor;
    private volatile Session session;
    private volatile boolean closed;
    private volatile Throwable lastError;

    private Client(Builder b) {
        this.opts = b;
        this.target = new Discovery(b.url, b.dnsServer);
        this.out = new LinkedBlockingDeque<>(b.outboundCapacity);
        this.supervisor = new Thread(this::supervise, "nexus-supervisor");
        supervisor.setDaemon(true);
    }

    /** A builder for a client of {@code url} ({@code http://host:port} or {@code nexus+srv://...}). */
    public static Builder builder(String url) {
        return new Builder(url);
    }

    /** Connects with default options. */
    public static Client connect(String url) {
        return builder(url).connect();
    }

    // === connecting ===

    /**
     * One round: each gateway in order until one accepts a session. When every gateway of a
     * cached SRV answer failed, DNS is asked again at once and the gateways the fresh answer
     * adds are tried in the same round, before the caller backs off.
     */
    private Session connectRound() {
        List<Discovery.Endpoint> endpoints = target.endpoints();
        boolean cached = !target.resolvedNow();
        List<String> attempts = new ArrayList<>();
        NexusException last = null;
        Set<String> tried = new HashSet<>();
        while (true) {
            for (Discovery.Endpoint ep : endpoints) {
                tried.add(ep.address());
                try {
                    return open(ep);
                } catch (NexusException e) {
                    last = e;
                    attempts.add(ep.name() + " (" + ep.address() + "): " + e.getMessage());
                    target.demote(ep.name());
                }
            }
            if (!(target.isSrv() && cached)) {
                break;
            }
            // Every gateway of a cached answer failed: the answer may be older than the gateways
            // that live now (e.g. one taken while the gateway that just died was the only one
            // up). Ask DNS again at once, and try what it adds, before backing off.
            cached = false;
            target.forget();
            try {
                endpoints = new ArrayList<>();
                for (Discovery.Endpoint ep : target.endpoints()) {
                    if (!tried.contains(ep.address())) {
                        endpoints.add(ep);
                    }
                }
            } catch (DiscoveryException e) {
                break;
            }
        }
        if (target.isSrv()) {
            target.forget();
            if (last instanceof DeniedException) {
                throw last;
            }
            throw new NoGatewayException("no gateway for " + target.url + " accepted a session: "
                    + (attempts.isEmpty() ? "no gateway to try" : String.join("; ", attempts)));
        }
        throw last != null ? last : new ConnectFailedException("no gateway");
    }

    /** The TLS context of sessions: JDK TLS with ALPN h2 ({@link Tls}), the CA and client certificate given. */
    private io.netty.handler.ssl.SslContext sslContext() {
        for (java.io.File f : new java.io.File[] {opts.tlsCaFile, opts.tlsClientCert, opts.tlsClientKey}) {
            if (f != null && !f.canRead()) {
                throw new ConnectFailedException("cannot read the TLS file " + f);
            }
        }
        try {
            return Tls.clientContext(opts.tlsCaFile, opts.tlsClientCert, opts.tlsClientKey);
        } catch (javax.net.ssl.SSLException | IllegalArgumentException e) {
            throw new ConnectFailedException("TLS setup: " + e.getMessage());
        }
    }

    private Session open(Discovery.Endpoint ep) {
        NettyChannelBuilder builder = NettyChannelBuilder.forTarget(ep.address())
                .maxInboundMessageSize(MAX_MESSAGE).disableRetry();
        if (target.https || (opts.tls && target.isSrv())) {
            builder.sslContext(sslContext());
            if (opts.tlsServerName != null) {
                builder.overrideAuthority(opts.tlsServerName);
            }
        } else {
            builder.usePlaintext();
        }
        ManagedChannel channel = builder.build();
        Session s = new Session(ep, channel);
        try {
            GatewayGrpc.newStub(channel).session(s);
            Batch.Builder hello = Batch.newBuilder().addFrames(Frame.newBuilder().setHello(Hello.newBuilder()
                    .setApiKey(opts.apiKey).setClientName(opts.name).setLanguage("java").setVersion(VERSION).setProtocol(1)
                    .addAllEncodings(Compression.available())));
            for (Subscription sub : subs.values()) {
                hello.addFrames(subFrame(sub.sid(), sub.subject(), sub.queueGroup(), 0));
            }
            for (StreamListener l : listeners.values()) {
                hello.addFrames(subFrame(l.sid(), l.subject(), l.queueGroup(), 0));
            }
            s.requests.onNext(hello.build());
            Object first = s.inbound.poll(opts.connectTimeout.toMillis(), TimeUnit.MILLISECONDS);
            if (first == null) {
                throw new ConnectFailedException(ep.address() + ": no Welcome within " + opts.connectTimeout.toMillis() + " ms");
            }
            if (first instanceof Throwable t) {
                throw Errors.fromStatus(t, ep.address());
            }
            if (first == END) {
                throw new ConnectFailedException(ep.address() + ": the gateway ended the session");
            }
            Welcome welcome = null;
            for (Frame f : ((Batch) first).getFramesList()) {
                if (f.hasWelcome() && welcome == null) {
                    welcome = f.getWelcome();
                } else if (f.hasError() && welcome == null) {
                    throw Errors.fromError(f.getError(), "");
                } else {
                    s.pending.add(f);
                }
            }
            if (welcome == null) {
                throw new ProtocolException("the first frame from the gateway was not Welcome");
            }
            s.info = new ServerInfo(welcome.getGatewayId(), welcome.getRegion(), welcome.getSessionId(),
                    welcome.getMaxPayload(), welcome.getMaxSubscriptions(), ep.address(),
                    List.copyOf(welcome.getEncodingsList()));
            s.requests.request(1);
            return s;
        } catch (InterruptedException e) {
            channel.shutdownNow();
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        } catch (RuntimeException e) {
            if (s.requests != null) {
                s.requests.cancel("connect failed", null);
            }
            channel.shutdownNow();
            throw e;
        }
    }

    private void start(Session s) {
        // Frames queued for an earlier session carry stale ids; only plain publishes survive.
        out.removeIf(o -> !stillWanted(o));
        session = s;
        Thread w = new Thread(() -> writer(s), "nexus-writer");
        Thread r = new Thread(() -> reader(s), "nexus-reader");
        w.setDaemon(true);
        r.setDaemon(true);
        w.start();
        r.start();
        synchronized (connectedLock) {
            connectedLock.notifyAll();
        }
    }

    /** Plain publishes, and operations queued after the old session was failed whose callers still wait. */
    private boolean stillWanted(Out o) {
        Frame f = o.frame();
        if (o.endOf() != null) {
            return false;
        }
        if (o.plainPub()) {
            return true;
        }
        return switch (f.getKindCase()) {
            case REQ -> reqs.containsKey(f.getReq().getReqId());
            case PING -> pings.containsKey(f.getPing().getNonce());
            case PUB -> acks.containsKey(f.getPub().getAckId());
            case STREAM_OPEN -> streams.containsKey(f.getStreamOpen().getStreamId());
            default -> false;
        };
    }

    private void supervise() {
        long lo = opts.backoffMin.toMillis(), hi = opts.backoffMax.toMillis();
        try {
            while (!closed) {
                Session s = session;
                boolean moving = false;
                if (s != null) {
                    s.done.await();
                    if (closed) {
                        return;
                    }
                    moving = s.goingAway;
                    endSession(s, new DisconnectedException("disconnected from the gateway"));
                    target.demote(s.endpoint.name());
                }
                long delay = lo;
                while (!closed) {
                    // A move after GoAway connects at once; the backoff is for gateways that failed.
                    if (!moving) {
                        Thread.sleep(delay / 2 + ThreadLocalRandom.current().nextLong(delay / 2 + 1));
                    }
                    moving = false;
                    try {
                        start(connectRound());
                        break;
                    } catch (NexusException e) {
                        lastError = e;
                        delay = Math.min(delay * 2, hi);
                    }
                }
            }
        } catch (InterruptedException e) {
            // closing
        }
    }

    private void endSession(Session s, NexusException err) {
        if (session == s) {
            session = null;
        }
        s.finish();
        if (s.requests != null) {
            s.requests.cancel("session ended", null);
        }
        s.channel.shutdownNow();
        for (var f : acks.values()) {
            f.completeExceptionally(err);
        }
        acks.clear();
        for (var f : reqs.values()) {
            f.completeExceptionally(err);
        }
        reqs.clear();
        for (var f : pings.values()) {
            f.completeExceptionally(err);
        }
        pings.clear();
        for (BiStream st : new ArrayList<>(streams.values())) {
            st.fail(err);
        }
        streams.clear();
    }

    // === the session's threads ===

    private void writer(Session s) {
        try {
            while (!s.ended) {
                Out first = out.pollFirst(100, TimeUnit.MILLISECONDS);
                if (first == null) {
                    continue;
                }
                if (first.endOf() != null) {
                    if (first.endOf() == s) {
                        s.requests.onCompleted(); // half-close: the gateway ends the session
                        return;
                    }
                    continue; // the end of an earlier session, over already
                }
                if (s.ended) {
                    out.offerFirst(first); // the next session decides whether it is still wanted
                    return;
                }
                List<String> accepted = s.info.encodings();
                String codec = accepted.isEmpty() ? null : opts.compression;
                Batch.Builder b = Batch.newBuilder()
                        .addFrames(Compression.encode(first.frame(), codec, accepted, opts.compressionThreshold));
                int size = first.size();
                int idle = 0;
                boolean end = false;
                while (b.getFramesCount() < opts.maxBatchFrames && size < opts.maxBatchBytes) {
                    Out nxt = out.pollFirst();
                    if (nxt != null && nxt.endOf() != null) {
                        if (nxt.endOf() == s) {
                            end = true;
                            break;
                        }
                        continue;
                    }
                    if (nxt == null) {
                        // Give publishers running right now a moment to queue what they have,
                        // so that it travels in this batch; a lone frame leaves after a few
                        // yields (microseconds), never after a timer.
                        if (++idle > WRITER_YIELDS) {
                            break;
                        }
                        Thread.yield();
                        continue;
                    }
                    idle = 0;
                    b.addFrames(Compression.encode(nxt.frame(), codec, accepted, opts.compressionThreshold));
                    size += nxt.size();
                }
                synchronized (s.readyLock) {
                    while (!s.requests.isReady() && !s.ended) {
                        s.readyLock.wait(100);
                    }
                }
                if (s.ended) {
                    return;
                }
                s.requests.onNext(b.build());
                if (end) {
                    s.requests.onCompleted();
                    return;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (RuntimeException e) {
            lastError = e;
            s.finish();
        }
    }

    private void reader(Session s) {
        try {
            for (Frame f : s.pending) {
                dispatch(f, s);
            }
            while (!s.ended) {
                Object o = s.inbound.poll(100, TimeUnit.MILLISECONDS);
                if (o == null) {
                    continue;
                }
                if (o instanceof Batch b) {
                    for (Frame f : b.getFramesList()) {
                        dispatch(f, s);
                    }
                    s.requests.request(1);
                } else {
                    if (o instanceof Throwable t) {
                        lastError = t;
                    }
                    break;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (RuntimeException e) {
            lastError = e;
        }
        s.finish();
    }

    static List<Map.Entry<String, String>> headersOf(List<Header> hs) {
        List<Map.Entry<String, String>> out = new ArrayList<>(hs.size());
        for (Header h : hs) {
            out.add(Map.entry(h.getKey(), h.getValue()));
        }
        return out;
    }

    private static List<Header> wire(List<Map.Entry<String, String>> hs) {
        List<Header> out = new ArrayList<>(hs.size());
        for (var h : hs) {
            out.add(Header.newBuilder().setKey(h.getKey()).setValue(h.getValue()).build());
        }
        return out;
    }

    private void dispatch(Frame received, Session s) throws InterruptedException {
        Frame f;
        try {
            f = Compression.decode(received, s.info.maxPayload());
        } catch (Compression.CompressionException e) {
            LOG.log(System.Logger.Level.WARNING, "dropped a {0} whose compressed payload cannot be decoded: {1}",
                    received.getKindCase(), e.getMessage());
            return;
        }
        switch (f.getKindCase()) {
            case MSG -> {
                var m = f.getMsg();
                Subscription sub = subs.get(m.getSid());
                if (sub != null && sub.accepts()) {
                    if (!m.getReplyTo().isEmpty() && m.getDeadlineMs() != 0) {
                        // A request (docs/protocol.md section 7.3): its answer is owed on this session.
                        s.served.put(m.getReplyTo(), System.currentTimeMillis() + (m.getDeadlineMs() & 0xffffffffL));
                    }
                    Message msg = new Message(m.getSubject(), m.getPayload().toByteArray(), headersOf(m.getHeadersList()),
                            m.getReplyTo(), m.getSid(), m.getDeadlineMs());
                    while (sub.accepts() && !sub.queue.offer(msg, 100, TimeUnit.MILLISECONDS)) {
                        // the application is behind: stop reading, so backpressure reaches the gateway
                    }
                }
            }
            case REPLY -> {
                var fut = reqs.remove(f.getReply().getReqId());
                if (fut != null) {
                    fut.complete(f.getReply());
                }
            }
            case ACK -> {
                var fut = acks.remove(f.getAck().getAckId());
                if (fut != null) {
                    fut.complete(f.getAck().getDelivered());
                }
            }
            case NACK -> {
                var fut = acks.remove(f.getNack().getAckId());
                if (fut != null) {
                    fut.completeExceptionally(Errors.fromError(f.getNack().getError(), ""));
                }
            }
            case PONG -> {
                var fut = pings.remove(f.getPong().getNonce());
                if (fut != null) {
                    fut.complete(null);
                }
            }
            case ERROR -> onError(f.getError());
            case STREAM_OPEN -> onStreamOpen(f.getStreamOpen());
            case STREAM_DATA -> {
                BiStream st = streams.get(f.getStreamData().getStreamId());
                if (st != null) {
                    st.onData(f.getStreamData());
                }
            }
            case CREDIT -> {
                BiStream st = streams.get(f.getCredit().getStreamId());
                if (st != null) {
                    st.onCredit(f.getCredit().getCredits() & 0xffffffffL);
                }
            }
            case STREAM_CLOSE -> {
                BiStream st = streams.get(f.getStreamClose().getStreamId());
                if (st != null) {
                    st.onClose(f.getStreamClose());
                }
            }
            case GO_AWAY -> onGoAway(s, f.getGoAway());
            default -> {
            }
        }
    }

    // === moving away from a draining gateway (docs/protocol.md section 3.4) ===

    /**
     * How long a client keeps a session after {@code GoAway{drain_ms}} to let what is in flight
     * finish: {@code drain_ms} minus {@link #GOAWAY_MARGIN_MS}, but at least half of it.
     */
    static long drainWindowMillis(long drainMs) {
        long total = Math.max(0, drainMs);
        return Math.max(total - GOAWAY_MARGIN_MS, total / 2);
    }

    /**
     * Whether new work (requests, confirmed publishes, subscribes, stream opens, flushes) may
     * start now: a session is open and its gateway is not draining.
     */
    private boolean accepting() {
        Session s = session;
        return s != null && !s.goingAway;
    }

    /** The gateway of {@code s} drains: start nothing new on it, demote it, and move (once per session). */
    private void onGoAway(Session s, GoAway g) {
        if (s.goingAway || session != s) {
            return;
        }
        s.goingAway = true;
        target.demote(s.endpoint.name());
        long drainMs = g.getDrainMs() & 0xffffffffL;
        long window = drainWindowMillis(drainMs);
        LOG.log(System.Logger.Level.INFO, "gateway {0} ({1}) is draining ({2}; drain_ms={3}): moving to another gateway within {4} ms",
                s.info.gatewayId(), s.endpoint.address(), g.getReason().isEmpty() ? "no reason given" : g.getReason(),
                String.valueOf(drainMs), String.valueOf(window));
        Thread t = new Thread(() -> move(s, window), "nexus-move");
        t.setDaemon(true);
        t.start();
    }

    /** Whether nothing started on {@code s} waits for an answer (requests, Acks, Pongs, our replies). */
    private boolean idle(Session s) {
        return reqs.isEmpty() && acks.isEmpty() && pings.isEmpty() && !s.servedPending();
    }

    /**
     * Lets {@code s} finish what is in flight for up to {@code windowMs}, then half-closes it
     * after every frame already queued. The supervisor sees the session end, fails what is still
     * unanswered (confirmed publishes are retried) and connects to another gateway at once.
     */
    private void move(Session s, long windowMs) {
        long deadline = System.currentTimeMillis() + windowMs;
        try {
            while (!s.ended && !idle(s) && System.currentTimeMillis() < deadline) {
                if (s.done.await(10, TimeUnit.MILLISECONDS)) {
                    return;
                }
            }
            if (s.ended) {
                return;
            }
            if (idle(s)) {
                LOG.log(System.Logger.Level.INFO, "gateway {0}: nothing in flight any more, ending the session", s.info.gatewayId());
            } else {
                LOG.log(System.Logger.Level.WARNING, "gateway {0}: drain window over with work still unanswered; ending the session "
                        + "(handled as on a lost session)", s.info.gatewayId());
            }
            Out marker = new Out(null, 0, false, s);
            while (!s.ended && !out.offerLast(marker, 100, TimeUnit.MILLISECONDS)) {
                // the queue is full: the writer is sending; try again
            }
            // The gateway ends the session as soon as it sees the half-close; should that not
            // happen (a writer stuck behind HTTP/2 flow control), give up on the session.
            if (!s.done.await(Math.max(1000, deadline - System.currentTimeMillis()) + 1000, TimeUnit.MILLISECONDS)) {
                LOG.log(System.Logger.Level.WARNING, "gateway {0}: the session did not end after the half-close; dropping it", s.info.gatewayId());
                s.finish();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void onError(Error e) {
        long ref = e.getRefId();
        NexusException err = Errors.fromError(e, "");
        CompletableFuture<Integer> ack = acks.remove(ref);
        if (ack != null) {
            ack.completeExceptionally(err);
        } else if (streams.containsKey(ref)) {
            streams.get(ref).fail(err);
        } else if (subs.containsKey(ref)) {
            if (e.getCode() == ErrorCode.SLOW_CONSUMER) {
                subs.get(ref).dropped++;
            } else {
                Subscription s = subs.remove(ref);
                if (s != null) {
                    s.end();
                }
            }
        } else if (e.getCode() == ErrorCode.DENIED || e.getCode() == ErrorCode.UNAVAILABLE) {
            lastError = err;
        }
    }

    private void onStreamOpen(StreamOpen o) {
        StreamListener l = listeners.get(o.getSid());
        BiStream st = new BiStream(this, o.getStreamId(), o.getSubject(), headersOf(o.getHeadersList()),
                o.getCredits() & 0xffffffffL, opts.streamWindow);
        st.opened.complete(null);
        if (l == null) {
            st.abort("not listening for streams on this subscription");
            return;
        }
        streams.put(o.getStreamId(), st);
        enqueueNow(Frame.newBuilder().setCredit(Credit.newBuilder().setStreamId(o.getStreamId()).setCredits(opts.streamWindow)).build());
        l.offer(st);
    }

    // === queueing frames ===

    void enqueue(Frame f, int size, boolean plainPub) {
        if (closed) {
            throw new ClosedException("client closed");
        }
        try {
            out.putLast(new Out(f, size, plainPub));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        }
    }

    /** Control frames from the reader: never block it (the queue may exceed its bound by these). */
    void enqueueNow(Frame f) {
        if (!closed && !out.offerLast(new Out(f, 64, false))) {
            handlers.submit(() -> enqueue(f, 64, false));
        }
    }

    void forgetStream(long id) {
        streams.remove(id);
    }

    void checkPayload(byte[] data) {
        Session s = session;
        if (opts.localPayloadCheck && s != null && s.info.maxPayload() > 0 && data.length > s.info.maxPayload()) {
            throw new LimitException("payload of " + data.length + " bytes exceeds limits.max_payload (" + s.info.maxPayload() + " bytes)");
        }
    }

    /** The reply to {@code request} is queued (or cannot be): a moving session no longer waits for it. */
    private void answered(Message request) {
        Session s = session;
        if (s != null && !request.replyTo().isEmpty()) {
            s.served.remove(request.replyTo());
        }
    }

    void unsubscribe(long sid) {
        Subscription s = subs.remove(sid);
        if (s != null) {
            s.end();
        }
        StreamListener l = listeners.remove(sid);
        if (l != null) {
            l.end();
        }
        if (session != null && !closed) {
            enqueue(Frame.newBuilder().setUnsub(Unsub.newBuilder().setSid(sid)).build(), 64, false);
        }
    }

    private static Frame subFrame(long sid, String subject, String queue, long ackId) {
        return Frame.newBuilder().setSub(Sub.newBuilder().setSid(sid).setSubject(subject).setQueueGroup(queue).setAckId(ackId)).build();
    }

    private static NexusException unwrap(Throwable t) {
        Throwable c = t instanceof CompletionException && t.getCause() != null ? t.getCause() : t;
        if (c instanceof NexusException n) {
            return n;
        }
        return new NexusException(c.toString(), c);
    }

    private int awaitAck(java.util.function.LongFunction<Frame> frameFor, int size) {
        long ackId = ids.getAndIncrement();
        CompletableFuture<Integer> fut = new CompletableFuture<>();
        acks.put(ackId, fut);
        try {
            enqueue(frameFor.apply(ackId), size, false);
            return fut.get(opts.requestTimeout.toMillis() + 1000, TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new AckTimeoutException("no acknowledgement from the gateway");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        } catch (java.util.concurrent.ExecutionException e) {
            throw unwrap(e.getCause());
        } finally {
            acks.remove(ackId);
        }
    }

    /** No Ack in time while the session stayed up: not retried (the gateway may be stuck). */
    private static final class AckTimeoutException extends DisconnectedException {
        private static final long serialVersionUID = 1L;

        AckTimeoutException(String message) {
            super(message);
        }
    }

    /**
     * Sends a publish with an ack id and waits for the answer. When the session is lost first,
     * sends it again on the next session with the same message id until the retry budget runs
     * out (the gateway de-duplicates by id).
     */
    private int publishConfirmed(Pub pub, int size) {
        long budget = opts.publishRetryTimeout.toMillis();
        long started = System.currentTimeMillis();
        for (int attempts = 1; ; attempts++) {
            try {
                if (budget > 0 && !accepting()
                        && !waitConnected(Math.max(1, budget - (System.currentTimeMillis() - started)))) {
                    throw new DisconnectedException("not connected to a gateway");
                }
                return awaitAck(ack -> Frame.newBuilder().setPub(pub.toBuilder().setAckId(ack)).build(), size);
            } catch (AckTimeoutException e) {
                throw e;
            } catch (DisconnectedException e) {
                if (closed) {
                    throw new ClosedException("client closed");
                }
                long elapsed = System.currentTimeMillis() - started;
                if (budget <= 0 || elapsed >= budget) {
                    String why = budget <= 0 ? "retrying is off (publishRetryTimeout = 0)"
                            : "gave up after " + attempts + " attempt(s) in " + elapsed + " ms (publishRetryTimeout " + opts.publishRetryTimeout + ")";
                    StringBuilder id = new StringBuilder();
                    for (byte b : pub.getId().toByteArray()) {
                        id.append(String.format("%02x", b));
                    }
                    throw new DisconnectedException("publish to \"" + pub.getSubject() + "\" not confirmed: the session was lost before the gateway's answer and "
                            + why + "; message id " + id + " may or may not have been delivered");
                }
            }
        }
    }

    /**
     * Waits up to {@code millis} until a session takes new work (after a reconnect, or a move
     * away from a draining gateway); false when the time ran out or the client was closed.
     */
    private boolean waitConnected(long millis) {
        long deadline = System.currentTimeMillis() + millis;
        synchronized (connectedLock) {
            while (!accepting() && !closed) {
                long left = deadline - System.currentTimeMillis();
                if (left <= 0) {
                    return false;
                }
                try {
                    connectedLock.wait(left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return false;
                }
            }
        }
        return accepting() && !closed;
    }

    private static byte[] ulid() {
        byte[] rand = new byte[10];
        RANDOM.nextBytes(rand);
        return ByteBuffer.allocate(16).putShort((short) (System.currentTimeMillis() >>> 32))
                .putInt((int) System.currentTimeMillis()).put(rand).array();
    }

    private static List<Map.Entry<String, String>> pairs(Map<String, String> headers) {
        List<Map.Entry<String, String>> out = new ArrayList<>();
        if (headers != null) {
            headers.forEach((k, v) -> out.add(Map.entry(k, v)));
        }
        return out;
    }

    // === public API ===

    /** True while a session with a gateway is open. */
    public boolean isConnected() {
        return session != null;
    }

    /** The gateway in use, or null while reconnecting. */
    public ServerInfo serverInfo() {
        Session s = session;
        return s == null ? null : s.info;
    }

    /** The last error seen by the session (for diagnostics). */
    public Throwable lastError() {
        return lastError;
    }

    /** Publishes a message; returns once queued (resent after a reconnect). */
    public void publish(String subject, byte[] payload) {
        publish(subject, payload, Map.of());
    }

    /** Publishes a UTF-8 text message. */
    public void publish(String subject, String payload) {
        publish(subject, payload.getBytes(StandardCharsets.UTF_8), Map.of());
    }

    /** Publishes a message with headers (a traceparent is added when missing). */
    public void publish(String subject, byte[] payload, Map<String, String> headers) {
        Subjects.validatePublish(subject);
        checkPayload(payload);
        enqueue(pubFrame(subject, payload, headers, 0), 64 + payload.length + subject.length(), true);
    }

    /**
     * Publishes and waits for the gateway; returns how many subscriptions received it. If the
     * session is lost before the answer came, the publish is sent again on the next session with
     * the same message id, for up to {@link Builder#publishRetryTimeout}; when that runs out it
     * fails with a {@link DisconnectedException} saying it was not confirmed.
     *
     * @param subject the subject
     * @param payload the payload
     * @param headers headers (a traceparent is added when missing)
     * @return the number of subscriptions that received it
     */
    public int publishAcked(String subject, byte[] payload, Map<String, String> headers) {
        Subjects.validatePublish(subject);
        checkPayload(payload);
        return publishConfirmed(pubFrame(subject, payload, headers, 0).getPub(), 64 + payload.length);
    }

    private Frame pubFrame(String subject, byte[] payload, Map<String, String> headers, long ackId) {
        return Frame.newBuilder().setPub(Pub.newBuilder().setSubject(subject).addAllHeaders(wire(Tracing.ensure(pairs(headers))))
                .setPayload(ByteString.copyFrom(payload)).setId(ByteString.copyFrom(ulid())).setAckId(ackId)).build();
    }

    /** Subscribes to a pattern ({@code *} one token, trailing {@code >} the rest); waits for the gateway's Ack. */
    public Subscription subscribe(String subject) {
        return subscribe(subject, "");
    }

    /** A queue subscription when {@code queue} is non-empty: each message goes to one member. */
    public Subscription subscribe(String subject, String queue) {
        Subjects.validatePattern(subject);
        long sid = ids.getAndIncrement();
        Subscription sub = new Subscription(this, sid, subject, queue == null ? "" : queue, opts.subscriptionCapacity);
        subs.put(sid, sub);
        confirmSub(sid, subject, sub.queueGroup());
        return sub;
    }

    /** A queue subscription: each message goes to exactly one member of {@code queue}. */
    public Subscription queueSubscribe(String subject, String queue) {
        return subscribe(subject, queue);
    }

    private void confirmSub(long sid, String subject, String queue) {
        if (!accepting()) {
            return; // sent with the other subscriptions on the next session
        }
        try {
            awaitAck(ack -> subFrame(sid, subject, queue, ack), 64);
        } catch (DisconnectedException e) {
            // re-sent on the next session
        } catch (NexusException e) {
            subs.remove(sid);
            listeners.remove(sid);
            throw e;
        }
    }

    /** Sends a request with the default timeout and waits for the answer. */
    public Message request(String subject, byte[] payload) {
        return request(subject, payload, Map.of(), opts.requestTimeout);
    }

    /**
     * Sends a request to one responder and waits for its answer. Throws NoRespondersException,
     * RequestTimeoutException, ServiceException, LimitException or DisconnectedException.
     */
    public Message request(String subject, byte[] payload, Map<String, String> headers, Duration timeout) {
        try {
            return requestAsync(subject, payload, headers, timeout).join();
        } catch (CompletionException e) {
            throw unwrap(e);
        }
    }

    /** The asynchronous form of {@link #request}. */
    public CompletableFuture<Message> requestAsync(String subject, byte[] payload, Map<String, String> headers, Duration timeout) {
        Subjects.validatePublish(subject);
        checkPayload(payload);
        long t = (timeout == null ? opts.requestTimeout : timeout).toMillis();
        long deadline = System.currentTimeMillis() + t;
        List<Header> hs = wire(Tracing.ensure(pairs(headers)));
        if (!waitConnected(t)) {
            if (closed) {
                return CompletableFuture.failedFuture(new ClosedException("client closed"));
            }
            return CompletableFuture.failedFuture(new RequestTimeoutException("request to \"" + subject + "\" timed out after " + t + " ms (not connected)"));
        }
        long reqId = ids.getAndIncrement();
        CompletableFuture<Reply> fut = new CompletableFuture<>();
        reqs.put(reqId, fut);
        long left = Math.max(1, deadline - System.currentTimeMillis());
        enqueue(Frame.newBuilder().setReq(Req.newBuilder().setReqId(reqId).setSubject(subject).addAllHeaders(hs)
                .setPayload(ByteString.copyFrom(payload)).setTimeoutMs((int) left).setId(ByteString.copyFrom(ulid()))).build(),
                64 + payload.length, false);
        return fut.orTimeout(left + 1000, TimeUnit.MILLISECONDS).handle((reply, ex) -> {
            reqs.remove(reqId);
            if (ex != null) {
                Throwable c = ex instanceof CompletionException && ex.getCause() != null ? ex.getCause() : ex;
                if (c instanceof TimeoutException) {
                    throw new RequestTimeoutException("request to \"" + subject + "\" timed out after " + t + " ms");
                }
                throw unwrap(c);
            }
            if (reply.hasError()) {
                throw Errors.fromError(reply.getError(), subject);
            }
            return new Message(subject, reply.getPayload().toByteArray(), headersOf(reply.getHeadersList()), "", 0, 0);
        });
    }

    /** Answers a request message. */
    public void reply(Message request, byte[] payload, List<Map.Entry<String, String>> headers) {
        try {
            enqueue(Frame.newBuilder().setReply(Reply.newBuilder().setReplyTo(request.replyTo()).addAllHeaders(wire(headers))
                    .setPayload(ByteString.copyFrom(payload))).build(), 64 + payload.length, false);
        } finally {
            answered(request);
        }
    }

    /** Refuses a request; the requester gets a ServiceException with {@code message}. */
    public void replyError(Message request, String message) {
        if (request.replyTo().isEmpty()) {
            return;
        }
        try {
            enqueue(Frame.newBuilder().setReply(Reply.newBuilder().setReplyTo(request.replyTo())
                    .setError(Error.newBuilder().setCode(ErrorCode.SERVICE_ERROR).setMessage(message == null ? "" : message))).build(), 64, false);
        } finally {
            answered(request);
        }
    }

    /**
     * Answers requests on {@code subject} (as a member of {@code queue} when non-empty) with
     * {@code handler}, run on a thread pool with the request's traceparent as the current
     * trace context. Throwing answers with an error.
     */
    public Service serve(String subject, String queue, Service.Handler handler) {
        Subscription sub = subscribe(subject, queue);
        Service service = new Service(this, sub, handler, handlers);
        services.add(service);
        return service;
    }

    /** Opens a bidirectional stream to one responder and waits until it accepted. */
    public BiStream openStream(String subject, Map<String, String> headers) {
        Subjects.validatePublish(subject);
        long t = opts.requestTimeout.toMillis();
        if (!waitConnected(t)) {
            if (closed) {
                throw new ClosedException("client closed");
            }
            throw new DisconnectedException("not connected to a gateway");
        }
        long id = ids.getAndIncrement();
        List<Map.Entry<String, String>> hs = Tracing.ensure(pairs(headers));
        BiStream st = new BiStream(this, id, subject, hs, 0, opts.streamWindow);
        streams.put(id, st);
        enqueue(Frame.newBuilder().setStreamOpen(StreamOpen.newBuilder().setStreamId(id).setSubject(subject)
                .addAllHeaders(wire(hs)).setCredits(opts.streamWindow)).build(), 64, false);
        try {
            st.opened.get(t, TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            st.abort("not accepted in time");
            throw new RequestTimeoutException("stream to \"" + subject + "\" not accepted within " + t + " ms");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        } catch (java.util.concurrent.ExecutionException e) {
            throw unwrap(e.getCause());
        }
        return st;
    }

    /** Accepts streams opened to {@code subject} (as a member of {@code queue} when non-empty). */
    public StreamListener listenStreams(String subject, String queue) {
        Subjects.validatePattern(subject);
        long sid = ids.getAndIncrement();
        StreamListener l = new StreamListener(this, sid, subject, queue == null ? "" : queue);
        listeners.put(sid, l);
        confirmSub(sid, subject, l.queueGroup());
        return l;
    }

    /** Waits until the gateway processed every frame queued before this call. */
    public void flush() {
        if (!waitConnected(opts.requestTimeout.toMillis())) {
            if (closed) {
                throw new ClosedException("client closed");
            }
            throw new DisconnectedException("not connected to a gateway");
        }
        long nonce = ids.getAndIncrement();
        CompletableFuture<Void> fut = new CompletableFuture<>();
        pings.put(nonce, fut);
        try {
            enqueue(Frame.newBuilder().setPing(Ping.newBuilder().setNonce(nonce)).build(), 64, false);
            fut.get(opts.requestTimeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            throw new DisconnectedException("no Pong from the gateway");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        } catch (java.util.concurrent.ExecutionException e) {
            throw unwrap(e.getCause());
        } finally {
            pings.remove(nonce);
        }
    }

    void drainSubscription(Subscription sub) {
        if (sub.closed) {
            return;
        }
        sub.draining = true;
        sub.closed = true;
        try {
            if (accepting() && !closed) {
                enqueue(Frame.newBuilder().setUnsub(Unsub.newBuilder().setSid(sub.sid())).build(), 64, false);
                // The Pong comes after every Msg the gateway queued before it took the Unsub.
                flush();
            }
        } catch (NexusException e) {
            // the session is gone, and with it anything still in flight
        } finally {
            subs.remove(sub.sid());
            sub.end();
        }
    }

    /**
     * Closes gracefully: stops every subscription without losing what the gateway already sent
     * for it (buffered messages stay readable, then iteration ends), lets responders answer the
     * requests they received, sends everything queued, then closes. Bounded by the request
     * timeout for each wait on the gateway. Later calls fail with {@link ClosedException}.
     */
    public void drain() {
        if (closed) {
            return;
        }
        try {
            for (Service s : services) {
                s.drain();
            }
            for (Subscription s : new ArrayList<>(subs.values())) {
                s.drain();
            }
            for (StreamListener l : new ArrayList<>(listeners.values())) {
                l.close();
            }
            if (session != null) {
                flush();
            }
        } catch (NexusException e) {
            // drain what could be drained; close regardless
        }
        close();
    }

    /** Ends the session and stops reconnecting; pending operations fail with ClosedException. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        supervisor.interrupt();
        Session s = session;
        if (s != null) {
            endSession(s, new ClosedException("client closed"));
        }
        for (Subscription sub : subs.values()) {
            sub.end();
        }
        for (StreamListener l : listeners.values()) {
            l.end();
        }
        handlers.shutdownNow();
        synchronized (connectedLock) {
            connectedLock.notifyAll();
        }
    }
}
