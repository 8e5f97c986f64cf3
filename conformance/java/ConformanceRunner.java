import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.nexus.client.BiStream;
import io.nexus.client.Client;
import io.nexus.client.DeniedException;
import io.nexus.client.DisconnectedException;
import io.nexus.client.DiscoveryException;
import io.nexus.client.InvalidException;
import io.nexus.client.InvalidSubjectException;
import io.nexus.client.LimitException;
import io.nexus.client.Message;
import io.nexus.client.NexusException;
import io.nexus.client.NoRespondersException;
import io.nexus.client.RequestTimeoutException;
import io.nexus.client.ServiceException;
import io.nexus.client.StreamListener;
import io.nexus.client.Subscription;
import io.nexus.client.Tracing;
import io.nexus.client.UnavailableException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Conformance runner for the Java adapter: reads conformance/cases.json and runs every case
 * against real gateway processes (step language: conformance/README.md).
 * Usage: java ConformanceRunner [--cases PATH] [--only NAME]...
 */
public final class ConformanceRunner {
    private static final Map<String, Class<? extends NexusException>> ERRORS = Map.ofEntries(
            Map.entry("invalid_subject", InvalidSubjectException.class), Map.entry("no_responders", NoRespondersException.class),
            Map.entry("timeout", RequestTimeoutException.class), Map.entry("service", ServiceException.class),
            Map.entry("limit", LimitException.class), Map.entry("denied", DeniedException.class),
            Map.entry("discovery", DiscoveryException.class), Map.entry("invalid", InvalidException.class),
            Map.entry("disconnected", DisconnectedException.class), Map.entry("unavailable", UnavailableException.class),
            Map.entry("closed", io.nexus.client.ClosedException.class),
            Map.entry("connect", io.nexus.client.ConnectFailedException.class));

    static final class CaseFailed extends RuntimeException {
        CaseFailed(String m) {
            super(m);
        }
    }

    private final Harness.Environment env;
    private final Map<String, Client> clients = new HashMap<>();
    private final Map<String, Subscription> subs = new HashMap<>();
    private final List<Thread> threads = new ArrayList<>();
    private String killed = "";
    private String terminated = "";
    private final Map<String, java.util.concurrent.Future<?>> pending = new HashMap<>();
    private final java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "conformance-pending");
        t.setDaemon(true);
        return t;
    });
    private double markBatches;
    private double markPubs;
    private final List<BiStream> held = java.util.Collections.synchronizedList(new ArrayList<>());

    ConformanceRunner(Harness.Environment env) {
        this.env = env;
    }

    private static String str(JsonObject s, String k, String dflt) {
        return s.has(k) ? s.get(k).getAsString() : dflt;
    }

    private static long num(JsonObject s, String k, long dflt) {
        return s.has(k) ? s.get(k).getAsLong() : dflt;
    }

    private static byte[] payloadOf(JsonObject s) {
        if (s.has("payload_size")) {
            byte[] b = new byte[s.get("payload_size").getAsInt()];
            Arrays.fill(b, (byte) 'x');
            return b;
        }
        return str(s, "payload", "").getBytes(StandardCharsets.UTF_8);
    }

    private static Map<String, String> headersOf(JsonObject s) {
        Map<String, String> h = new LinkedHashMap<>();
        if (s.has("headers")) {
            for (var e : s.getAsJsonObject("headers").entrySet()) {
                h.put(e.getKey(), e.getValue().getAsString());
            }
        }
        return h;
    }

    private static io.nexus.client.Service.Handler handlerFor(String spec) {
        return m -> {
            if (spec.equals("echo")) {
                return m.payload();
            }
            if (spec.startsWith("delay:")) {
                Thread.sleep(Long.parseLong(spec.substring("delay:".length())));
                return m.payload();
            }
            if (spec.startsWith("prefix:")) {
                byte[] p = spec.substring(7).getBytes(StandardCharsets.UTF_8);
                byte[] out = Arrays.copyOf(p, p.length + m.payload().length);
                System.arraycopy(m.payload(), 0, out, p.length, m.payload().length);
                return out;
            }
            if (spec.startsWith("error:")) {
                throw new ServiceException(spec.substring(6));
            }
            if (spec.equals("silent")) {
                Thread.sleep(3_600_000);
            }
            if (spec.equals("traceparent")) {
                return (m.traceparent() == null ? "" : m.traceparent()).getBytes(StandardCharsets.UTF_8);
            }
            throw new ServiceException("unknown handler " + spec);
        };
    }

    private void expectError(JsonObject s, Callable<?> body) throws Exception {
        String kind = s.get("expect_error").getAsString();
        long start = System.currentTimeMillis();
        try {
            body.call();
        } catch (NexusException e) {
            if (!ERRORS.get(kind).isInstance(e)) {
                throw new CaseFailed("expected " + kind + ", got " + e.getClass().getSimpleName() + ": " + e.getMessage());
            }
            if (s.has("error_contains") && !String.valueOf(e.getMessage()).contains(s.get("error_contains").getAsString())) {
                throw new CaseFailed("error " + e.getMessage() + " does not contain " + s.get("error_contains").getAsString());
            }
            if (s.has("max_elapsed_ms") && System.currentTimeMillis() - start > s.get("max_elapsed_ms").getAsLong()) {
                throw new CaseFailed("error came after " + (System.currentTimeMillis() - start) + " ms");
            }
            return;
        }
        throw new CaseFailed("expected a " + kind + " error, got success");
    }

    private <T> T retrying(JsonObject s, Callable<T> body) throws Exception {
        long deadline = System.currentTimeMillis() + num(s, "retry_ms", 0);
        while (true) {
            try {
                return body.call();
            } catch (NexusException e) {
                if (System.currentTimeMillis() >= deadline) {
                    throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    private Message next(String sub, long timeoutMs) {
        Message m = subs.get(sub).next(Duration.ofMillis(timeoutMs));
        if (m == null) {
            throw new CaseFailed(sub + ": no message within " + timeoutMs + " ms");
        }
        return m;
    }

    void step(JsonObject s) throws Exception {
        String op = s.get("op").getAsString();
        Client c = s.has("client") ? clients.get(s.get("client").getAsString()) : null;
        switch (op) {
            case "connect" -> {
                String key = env.keys.getOrDefault(str(s, "key", "none"), "");
                String via = str(s, "via", "direct");
                String url = "srv".equals(via) ? env.srvUrl(str(s, "region", null))
                        : "relay".equals(via) ? env.relay.url()
                        : "remote".equals(str(s, "gateway", "")) ? env.remote.url() : env.gateway.url();
                Callable<Client> make = () -> {
                    Client.Builder b = Client.builder(url).apiKey(key).name("conformance-" + s.get("client").getAsString())
                            .connectTimeout(Duration.ofSeconds(3)).reconnectBackoff(Duration.ofMillis(50), Duration.ofMillis(500));
                    if (s.has("stream_window")) {
                        b.streamWindow(s.get("stream_window").getAsInt());
                    }
                    if (s.has("publish_retry_ms")) {
                        b.publishRetryTimeout(Duration.ofMillis(s.get("publish_retry_ms").getAsLong()));
                    }
                    if (s.has("local_payload_check")) {
                        b.localPayloadCheck(s.get("local_payload_check").getAsBoolean());
                    }
                    if (s.has("compression")) {
                        String codec = s.get("compression").getAsString();
                        b.compression(codec.equals("off") ? null : codec);
                    }
                    if (s.has("tls_ca")) {
                        b.tlsCaFile(env.tlsFiles(s.get("tls_ca").getAsString())[0]);
                    }
                    if (s.has("tls_client_cert")) {
                        String[] f = env.tlsFiles(s.get("tls_client_cert").getAsString());
                        b.tlsClientCertFiles(f[1], f[2]);
                    }
                    if (s.has("tls_server_name")) {
                        b.tlsServerName(s.get("tls_server_name").getAsString());
                    }
                    if (s.has("tls")) {
                        b.tls(s.get("tls").getAsBoolean());
                    }
                    return b.connect();
                };
                if (s.has("expect_error")) {
                    expectError(s, make);
                } else {
                    clients.put(s.get("client").getAsString(), retrying(s, make));
                }
            }
            case "close" -> clients.remove(s.get("client").getAsString()).close();
            case "subscribe" -> {
                Callable<Object> sub = () -> subs.put(s.get("sub").getAsString(), c.subscribe(s.get("subject").getAsString(), str(s, "queue", "")));
                if (s.has("expect_error")) {
                    expectError(s, sub);
                } else {
                    sub.call();
                }
            }
            case "publish" -> {
                boolean ack = s.has("ack") && s.get("ack").getAsBoolean();
                if (s.has("pending")) {
                    pending.put(s.get("pending").getAsString(),
                            pool.submit(() -> c.publishAcked(s.get("subject").getAsString(), payloadOf(s), headersOf(s))));
                    Thread.sleep(20); // let it queue its frame before the next step
                    return;
                }
                Callable<Object> pub = () -> {
                    if (ack) {
                        c.publishAcked(s.get("subject").getAsString(), payloadOf(s), headersOf(s));
                    } else {
                        c.publish(s.get("subject").getAsString(), payloadOf(s), headersOf(s));
                    }
                    return null;
                };
                if (s.has("expect_error")) {
                    expectError(s, pub);
                } else {
                    pub.call();
                }
            }
            case "publish_many" -> {
                for (int i = 0; i < s.get("count").getAsInt(); i++) {
                    c.publish(s.get("subject").getAsString(), s.get("prefix").getAsString() + "-" + i);
                }
            }
            case "flush" -> c.flush();
            case "expect_message" -> {
                Message m = next(s.get("sub").getAsString(), num(s, "timeout_ms", 5000));
                if (s.has("subject") && !m.subject().equals(s.get("subject").getAsString())) {
                    throw new CaseFailed("expected subject " + s.get("subject").getAsString() + ", got " + m.subject());
                }
                if ((s.has("payload") || s.has("payload_size")) && !Arrays.equals(m.payload(), payloadOf(s))) {
                    throw new CaseFailed("unexpected payload " + m.text());
                }
                for (var h : headersOf(s).entrySet()) {
                    if (!h.getValue().equals(m.header(h.getKey()))) {
                        throw new CaseFailed("header " + h.getKey() + ": expected " + h.getValue() + ", got " + m.header(h.getKey()));
                    }
                }
                if (s.has("has_traceparent") && s.get("has_traceparent").getAsBoolean() && !Tracing.isValid(m.traceparent())) {
                    throw new CaseFailed("no valid traceparent");
                }
            }
            case "expect_no_message" -> {
                Message m = subs.get(s.get("sub").getAsString()).next(Duration.ofMillis(s.get("within_ms").getAsLong()));
                if (m != null) {
                    throw new CaseFailed("unexpected message on " + m.subject());
                }
            }
            case "expect_all" -> {
                for (int i = 0; i < s.get("count").getAsInt(); i++) {
                    Message m = next(s.get("sub").getAsString(), num(s, "timeout_ms", 10000));
                    String want = s.get("prefix").getAsString() + "-" + i;
                    if (!m.text().equals(want)) {
                        throw new CaseFailed("expected " + want + " (in order), got " + m.text());
                    }
                }
            }
            case "expect_exclusive" -> {
                Map<String, String> seen = new HashMap<>();
                int count = s.get("count").getAsInt();
                long deadline = System.currentTimeMillis() + num(s, "timeout_ms", 10000);
                JsonArray names = s.getAsJsonArray("subs");
                while (seen.size() < count) {
                    if (System.currentTimeMillis() > deadline) {
                        throw new CaseFailed("only " + seen.size() + " of " + count + " messages reached the group");
                    }
                    for (JsonElement n : names) {
                        Message m = subs.get(n.getAsString()).next(Duration.ofMillis(20));
                        if (m == null) {
                            continue;
                        }
                        if (seen.containsKey(m.text())) {
                            throw new CaseFailed(m.text() + " delivered to " + seen.get(m.text()) + " and " + n.getAsString());
                        }
                        seen.put(m.text(), n.getAsString());
                    }
                }
                for (JsonElement n : names) {
                    Message m = subs.get(n.getAsString()).next(Duration.ofMillis(100));
                    if (m != null) {
                        throw new CaseFailed("extra delivery " + m.text() + " to " + n.getAsString());
                    }
                }
                for (int i = 0; i < count; i++) {
                    if (!seen.containsKey(s.get("prefix").getAsString() + "-" + i)) {
                        throw new CaseFailed("message " + i + " never reached the group");
                    }
                }
            }
            case "serve" -> c.serve(s.get("subject").getAsString(), str(s, "queue", ""), handlerFor(s.get("handler").getAsString()));
            case "request" -> {
                Duration timeout = s.has("timeout_ms") ? Duration.ofMillis(s.get("timeout_ms").getAsLong()) : null;
                Callable<Message> req = () -> c.request(s.get("subject").getAsString(), payloadOf(s), headersOf(s), timeout);
                Callable<Message> checked = () -> {
                    Message m = retrying(s, req);
                    if (s.has("expect_payload") && !m.text().equals(s.get("expect_payload").getAsString())) {
                        throw new CaseFailed("expected reply " + s.get("expect_payload").getAsString() + ", got " + m.text());
                    }
                    if (s.has("expect_payload_size") && m.payload().length != s.get("expect_payload_size").getAsInt()) {
                        throw new CaseFailed("reply of " + m.payload().length + " bytes");
                    }
                    return m;
                };
                if (s.has("pending")) {
                    // `await` collects the outcome (and checks expect_error there).
                    pending.put(s.get("pending").getAsString(), pool.submit(s.has("expect_error") ? req : checked));
                    Thread.sleep(50); // let the request reach the responder before the next step
                    return;
                }
                if (s.has("expect_error")) {
                    expectError(s, req);
                    return;
                }
                checked.call();
            }
            case "listen_streams" -> {
                StreamListener l = c.listenStreams(s.get("subject").getAsString(), str(s, "queue", ""));
                Thread t = new Thread(() -> {
                    while (true) {
                        BiStream st = l.accept(Duration.ofDays(1));
                        if (st == null) {
                            return;
                        }
                        if (s.get("handler").getAsString().equals("hold")) {
                            held.add(st);
                            continue;
                        }
                        Thread echo = new Thread(() -> {
                            try {
                                for (Message m : st) {
                                    st.send(m.payload());
                                }
                                st.finish();
                            } catch (NexusException e) {
                                // the stream ended
                            }
                        });
                        echo.setDaemon(true);
                        echo.start();
                    }
                });
                t.setDaemon(true);
                t.start();
                threads.add(t);
            }
            case "stream" -> {
                if (s.has("expect_error")) {
                    expectError(s, () -> c.openStream(s.get("subject").getAsString(), Map.of()));
                    return;
                }
                BiStream st = c.openStream(s.get("subject").getAsString(), Map.of());
                int count = s.get("count").getAsInt();
                String prefix = s.get("prefix").getAsString();
                AtomicReference<Throwable> sendError = new AtomicReference<>();
                Thread sender = new Thread(() -> {
                    try {
                        for (int i = 0; i < count; i++) {
                            st.send((prefix + "-" + i).getBytes(StandardCharsets.UTF_8));
                        }
                        st.finish();
                    } catch (Throwable e) {
                        sendError.set(e);
                    }
                });
                sender.start();
                int got = 0;
                for (Message m : st) {
                    if (!m.text().equals(prefix + "-" + got)) {
                        throw new CaseFailed("stream: expected " + prefix + "-" + got + ", got " + m.text());
                    }
                    got++;
                }
                sender.join();
                if (sendError.get() != null) {
                    throw new CaseFailed("stream send: " + sendError.get());
                }
                if (got != count) {
                    throw new CaseFailed("stream: " + got + " of " + count + " frames came back");
                }
            }
            case "kill_connected_gateway" -> {
                if (c.serverInfo() == null) {
                    throw new CaseFailed("the client is not connected");
                }
                killed = c.serverInfo().gatewayId();
                env.killGateway(killed);
            }
            case "terminate_connected_gateway" -> {
                if (c.serverInfo() == null) {
                    throw new CaseFailed("the client is not connected");
                }
                killed = terminated = c.serverInfo().gatewayId();
                env.gatewayById(terminated).terminate();
            }
            case "expect_other_gateway" -> {
                long deadline = System.currentTimeMillis() + num(s, "timeout_ms", 5000);
                while (true) {
                    var info = c.serverInfo();
                    if (info != null && !info.gatewayId().equals(killed)) {
                        break;
                    }
                    if (System.currentTimeMillis() > deadline) {
                        throw new CaseFailed("expected a gateway other than " + killed + ", got " + info);
                    }
                    Thread.sleep(20);
                }
            }
            case "expect_gateway_exited" -> {
                if (terminated.isEmpty()) {
                    throw new CaseFailed("no gateway was terminated");
                }
                long timeoutMs = num(s, "timeout_ms", 5000);
                Integer code = env.gatewayById(terminated).waitExited(timeoutMs);
                if (code == null) {
                    throw new CaseFailed("gateway " + terminated + " still runs " + timeoutMs + " ms later");
                }
                if (code != 0) {
                    throw new CaseFailed("gateway " + terminated + " exited with status " + code);
                }
            }
            case "stream_blocks" -> {
                BiStream st = c.openStream(s.get("subject").getAsString(), Map.of());
                int expect = s.get("expect_sent").getAsInt();
                long blockMs = s.get("block_ms").getAsLong();
                java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newSingleThreadExecutor();
                int sent = 0;
                try {
                    while (sent <= expect) {
                        byte[] frame = ("frame-" + sent).getBytes(StandardCharsets.UTF_8);
                        java.util.concurrent.Future<?> f = pool.submit(() -> st.send(frame));
                        try {
                            f.get(blockMs, java.util.concurrent.TimeUnit.MILLISECONDS);
                        } catch (java.util.concurrent.TimeoutException e) {
                            break;
                        }
                        sent++;
                    }
                } finally {
                    st.abort("conformance: done"); // wakes a send still waiting for credit
                    pool.shutdown();
                }
                if (sent != expect) {
                    throw new CaseFailed(sent + " sends completed before one waited, expected " + expect);
                }
            }
            case "restart_gateway" -> env.gateway.restart();
            case "await" -> {
                var f = pending.remove(s.get("pending").getAsString());
                Callable<Object> wait = () -> {
                    try {
                        return f.get();
                    } catch (java.util.concurrent.ExecutionException e) {
                        if (e.getCause() instanceof Exception x) {
                            throw x;
                        }
                        throw e;
                    }
                };
                if (s.has("expect_error")) {
                    expectError(s, wait);
                } else {
                    wait.call();
                }
            }
            case "relay_hold" -> env.relay.hold();
            case "relay_cut" -> env.relay.cut();
            case "relay_block" -> env.relay.blocked = true;
            case "relay_pass" -> env.relay.blocked = false;
            case "await_route" -> env.awaitRoute(s.get("name").getAsString(), s.get("subject").getAsString());
            case "kill_gateway" -> Harness.kill(env.gateway.proc);
            case "start_gateway" -> env.gateway.start();
            case "expect_disconnected" -> {
                long deadline = System.currentTimeMillis() + num(s, "timeout_ms", 5000);
                while (c.isConnected()) {
                    if (System.currentTimeMillis() > deadline) {
                        throw new CaseFailed(s.get("client").getAsString() + " still connected");
                    }
                    Thread.sleep(20);
                }
            }
            case "await_interest" -> env.awaitInterest(s.get("subject").getAsString());
            case "await_replicated" -> env.awaitReplicated();
            case "mark_metrics" -> {
                markBatches = env.metric("nexus_session_batches_received_total");
                markPubs = env.metric("nexus_messages_total", "pattern=\"pub\"", "direction=\"in\"");
            }
            case "expect_batched" -> {
                double batches = env.metric("nexus_session_batches_received_total") - markBatches;
                double pubs = env.metric("nexus_messages_total", "pattern=\"pub\"", "direction=\"in\"") - markPubs;
                if (pubs < s.get("messages").getAsDouble() || batches > s.get("max_batches").getAsDouble() || batches < 1) {
                    throw new CaseFailed(pubs + " publishes arrived in " + batches + " batches; expected at least "
                            + s.get("messages") + " in at most " + s.get("max_batches"));
                }
                System.out.printf("  batched: %.0f publishes in %.0f gRPC messages (at most %s)%n", pubs, batches, s.get("max_batches"));
            }
            case "expect_metric" -> {
                java.util.List<String> labels = new java.util.ArrayList<>();
                if (s.has("labels")) {
                    for (var e : s.getAsJsonObject("labels").entrySet()) {
                        labels.add(e.getKey() + "=\"" + e.getValue().getAsString() + "\"");
                    }
                }
                double value = env.metric(s.get("metric").getAsString(), labels.toArray(new String[0]));
                if (value != s.get("value").getAsDouble()) {
                    throw new CaseFailed(s.get("metric").getAsString() + labels + " is " + value + ", expected " + s.get("value"));
                }
            }
            case "drain" -> c.drain();
            case "expect_end" -> {
                Subscription sub = subs.get(s.get("sub").getAsString());
                Message m = sub.next(Duration.ofMillis(num(s, "timeout_ms", 5000)));
                if (m != null) {
                    throw new CaseFailed(s.get("sub").getAsString() + ": expected the end, got " + m.text());
                }
                if (!sub.isEnded()) {
                    throw new CaseFailed(s.get("sub").getAsString() + " did not end");
                }
            }
            case "expect_eventually" -> {
                long deadline = System.currentTimeMillis() + num(s, "timeout_ms", 10000);
                String payload = s.get("payload").getAsString();
                while (true) {
                    try {
                        c.publish(s.get("subject").getAsString(), payload);
                        Message m = subs.get(s.get("sub").getAsString()).next(Duration.ofMillis(100));
                        if (m != null && m.text().equals(payload)) {
                            return;
                        }
                    } catch (NexusException e) {
                        // not yet
                    }
                    if (System.currentTimeMillis() > deadline) {
                        throw new CaseFailed("never received " + payload);
                    }
                }
            }
            case "measure_failover" -> measureFailover(s);
            default -> throw new CaseFailed("unknown op " + op);
        }
    }

    /**
     * Kills the gateway a subscriber (connected through DNS SRV, default settings) is on,
     * {@code rounds} times, and measures the gap from the kill to the first message published
     * after the kill (on the other gateway, every ~2 ms) that reaches the subscriber.
     */
    private void measureFailover(JsonObject s) throws Exception {
        int rounds = failoverRounds(s);
        String key = env.keys.getOrDefault(str(s, "key", "none"), "");
        String subject = str(s, "subject", "failover.ticks");
        Client.Builder sb = Client.builder(env.srvUrl(null));
        if (!key.isEmpty()) {
            sb.apiKey(key);
        }
        Client subClient = sb.connect();
        clients.put("failover-subscriber", subClient);
        Subscription sub = subClient.subscribe(subject);
        subClient.flush();
        List<Double> gaps = new ArrayList<>();
        for (int round = 0; round < rounds; round++) {
            var info = subClient.serverInfo();
            if (info == null) {
                throw new CaseFailed("round " + round + ": the subscriber is not connected");
            }
            Harness.Gateway on = env.gatewayById(info.gatewayId());
            Harness.Gateway other = env.gateways.stream().filter(g -> g != on).findFirst().orElseThrow();
            Client.Builder pb = Client.builder(other.url());
            if (!key.isEmpty()) {
                pb.apiKey(key);
            }
            Client publisher;
            try {
                publisher = pb.connect();
            } catch (NexusException e) {
                throw new CaseFailed("round " + round + ": the publisher cannot connect to " + other.url()
                        + " (the subscriber is on " + info.gatewayId() + "): " + e.getMessage());
            }
            java.util.concurrent.atomic.AtomicLong started = new java.util.concurrent.atomic.AtomicLong(); // the last tick begun
            java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
            final int r = round;
            Thread ticker = new Thread(() -> {
                for (long i = 1; !stop.get(); i++) {
                    started.set(i);
                    try {
                        publisher.publish(subject, r + "-" + i);
                        publisher.flush();
                    } catch (NexusException e) {
                        // the next tick
                    }
                    try {
                        Thread.sleep(2);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }, "failover-ticker");
            ticker.setDaemon(true);
            ticker.start();
            try {
                // Ticks of this round flow through the cluster hop before the kill.
                tickAfter(sub, round, 0, 15000, "round " + round + ": no tick before the kill");
                Harness.kill(on.proc);
                on.proc = null;
                long killed = System.nanoTime();
                // The first tick published after the kill proves the new session (an older one
                // may have been in flight or in the client's buffer).
                long lastBefore = started.get();
                tickAfter(sub, round, lastBefore, 10000, "round " + round + ": no tick within 10 s of the kill");
                gaps.add((System.nanoTime() - killed) / 1e6);
            } finally {
                stop.set(true);
                ticker.join();
                publisher.close();
            }
            on.start();
        }
        reportFailover("java", gaps, s);
    }

    /** The step's {@code rounds}, or {@code $NEXUS_FAILOVER_ROUNDS} (the by-hand measurement). */
    private static int failoverRounds(JsonObject s) {
        String env = System.getenv("NEXUS_FAILOVER_ROUNDS");
        return env != null && !env.isEmpty() ? Integer.parseInt(env) : (int) num(s, "rounds", 3);
    }

    /** Reads {@code sub} until a tick {@code <round>-<i>} with i > {@code after} arrives. */
    private static void tickAfter(Subscription sub, int round, long after, long timeoutMs, String what) {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (true) {
            long left = deadline - System.currentTimeMillis();
            if (left <= 0) {
                throw new CaseFailed(what);
            }
            Message m = sub.next(Duration.ofMillis(left));
            if (m == null) {
                if (sub.isEnded()) {
                    throw new CaseFailed(what + ": the subscription ended");
                }
                continue;
            }
            String[] parts = m.text().split("-");
            if (Integer.parseInt(parts[0]) == round && Long.parseLong(parts[1]) > after) {
                return;
            }
        }
    }

    /** Prints the gaps' p50/p99 (as tests/cluster.rs does) and fails when one is too long. */
    private static void reportFailover(String lang, List<Double> gaps, JsonObject s) {
        List<Double> ms = new ArrayList<>(gaps);
        java.util.Collections.sort(ms);
        java.util.function.DoubleFunction<Double> at = q -> ms.get(Math.min(Math.max((int) Math.ceil(ms.size() * q), 1), ms.size()) - 1);
        StringBuilder all = new StringBuilder();
        for (double g : ms) {
            all.append(all.length() == 0 ? "" : ", ").append(Math.round(g));
        }
        double max = ms.get(ms.size() - 1);
        System.out.println("  FAILOVER " + lang + " kills=" + ms.size() + " p50=" + Math.round(at.apply(0.5)) + "ms p99="
                + Math.round(at.apply(0.99)) + "ms max=" + Math.round(max) + "ms all=[" + all + "]");
        long bound = num(s, "max_gap_ms", 3000);
        if (max > bound) {
            throw new CaseFailed("a gap of " + Math.round(max) + " ms is longer than " + bound + " ms");
        }
    }

    static void runCase(JsonObject doc, JsonObject kase) throws Exception {
        Harness.Environment env = new Harness.Environment(doc.getAsJsonObject("environments").getAsJsonObject(kase.get("env").getAsString()));
        ConformanceRunner r = new ConformanceRunner(env);
        try {
            env.start();
            JsonArray steps = kase.getAsJsonArray("steps");
            for (int i = 0; i < steps.size(); i++) {
                JsonObject s = steps.get(i).getAsJsonObject();
                try {
                    r.step(s);
                } catch (Exception e) {
                    throw new CaseFailed("step " + (i + 1) + " (" + s.get("op").getAsString() + "): " + e.getClass().getSimpleName() + ": " + e.getMessage());
                }
            }
        } finally {
            r.pool.shutdownNow();
            for (Client c : r.clients.values()) {
                c.close();
            }
            env.stop();
        }
    }

    public static void main(String[] args) throws Exception {
        String cases = "conformance/cases.json";
        List<String> only = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--cases")) {
                cases = args[++i];
            } else if (args[i].equals("--only")) {
                only.add(args[++i]);
            }
        }
        JsonObject doc = JsonParser.parseString(Files.readString(Path.of(cases))).getAsJsonObject();
        int passed = 0, failed = 0;
        for (JsonElement e : doc.getAsJsonArray("cases")) {
            JsonObject kase = e.getAsJsonObject();
            String name = kase.get("name").getAsString();
            if (!only.isEmpty() && !only.contains(name)) {
                continue;
            }
            long start = System.currentTimeMillis();
            try {
                runCase(doc, kase);
                passed++;
                System.out.println("PASS " + name + " (" + (System.currentTimeMillis() - start) + " ms)");
            } catch (Exception ex) {
                failed++;
                System.out.println("FAIL " + name + ": " + ex.getMessage());
            }
        }
        System.out.println("java conformance: " + passed + " passed, " + failed + " failed");
        System.exit(failed > 0 ? 1 : 0);
    }
}
