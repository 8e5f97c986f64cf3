package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.grpc.Server;
import io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.BiConsumer;
import nexus.v1.GatewayGrpc;
import nexus.v1.GatewayOuterClass.Ack;
import nexus.v1.GatewayOuterClass.Batch;
import nexus.v1.GatewayOuterClass.Frame;
import nexus.v1.GatewayOuterClass.GoAway;
import nexus.v1.GatewayOuterClass.Msg;
import nexus.v1.GatewayOuterClass.Pong;
import nexus.v1.GatewayOuterClass.Pub;
import nexus.v1.GatewayOuterClass.Reply;
import nexus.v1.GatewayOuterClass.Req;
import nexus.v1.GatewayOuterClass.Welcome;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * How the client moves away from a draining gateway (docs/protocol.md section 3.4), against a
 * scripted in-process gateway (a grpc-java server): the test decides when GoAway is sent and
 * what is answered, and sees every frame the client sent on each session.
 */
class GoAwayTest {
    /** One session with the fake gateway: what the client sent, and whether it half-closed. */
    static final class FakeSession {
        final int number;
        final StreamObserver<Batch> responses;
        final List<Frame> received = new CopyOnWriteArrayList<>();
        volatile boolean halfClosed;

        FakeSession(int number, StreamObserver<Batch> responses) {
            this.number = number;
            this.responses = responses;
        }

        synchronized void send(Frame f) {
            if (!halfClosed) {
                responses.onNext(Batch.newBuilder().addFrames(f).build());
            }
        }

        List<Frame> of(Frame.KindCase kind) {
            List<Frame> out = new ArrayList<>();
            for (Frame f : received) {
                if (f.getKindCase() == kind) {
                    out.add(f);
                }
            }
            return out;
        }
    }

    /** A gRPC server speaking just enough of the session protocol; the script adds behaviour. */
    static final class FakeGateway extends GatewayGrpc.GatewayImplBase {
        final List<FakeSession> sessions = new CopyOnWriteArrayList<>();
        final BiConsumer<FakeSession, Frame> script;
        final Server server;

        FakeGateway(BiConsumer<FakeSession, Frame> script) throws Exception {
            this.script = script;
            this.server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0)).addService(this).build().start();
        }

        String url() {
            return "http://127.0.0.1:" + server.getPort();
        }

        FakeSession session(int n) throws InterruptedException {
            long deadline = System.currentTimeMillis() + 5000;
            while (sessions.size() < n) {
                assertTrue(System.currentTimeMillis() < deadline, "no session " + n);
                Thread.sleep(10);
            }
            return sessions.get(n - 1);
        }

        @Override
        public StreamObserver<Batch> session(StreamObserver<Batch> responses) {
            FakeSession s = new FakeSession(sessions.size() + 1, responses);
            sessions.add(s);
            return new StreamObserver<>() {
                @Override
                public void onNext(Batch b) {
                    for (Frame f : b.getFramesList()) {
                        s.received.add(f);
                        switch (f.getKindCase()) {
                            case HELLO -> s.send(Frame.newBuilder().setWelcome(Welcome.newBuilder()
                                    .setSessionId(String.valueOf(s.number)).setGatewayId("fake-" + s.number).setProtocol(1)).build());
                            case SUB -> {
                                if (f.getSub().getAckId() != 0) {
                                    s.send(Frame.newBuilder().setAck(Ack.newBuilder().setAckId(f.getSub().getAckId())).build());
                                }
                            }
                            case PING -> s.send(Frame.newBuilder().setPong(Pong.newBuilder().setNonce(f.getPing().getNonce())).build());
                            default -> {
                            }
                        }
                        script.accept(s, f);
                    }
                }

                @Override
                public void onError(Throwable t) {
                    s.halfClosed = true;
                }

                @Override
                public void onCompleted() {
                    // Like the gateway: a half-close ends the session.
                    synchronized (s) {
                        s.halfClosed = true;
                        responses.onCompleted();
                    }
                }
            };
        }
    }

    private final List<FakeGateway> gateways = new ArrayList<>();
    private final List<Client> clients = new ArrayList<>();
    private final ScheduledExecutorService timers = Executors.newSingleThreadScheduledExecutor();

    private FakeGateway gateway(BiConsumer<FakeSession, Frame> script) throws Exception {
        FakeGateway g = new FakeGateway(script);
        gateways.add(g);
        return g;
    }

    private Client client(FakeGateway g) {
        Client c = Client.builder(g.url()).reconnectBackoff(Duration.ofSeconds(5), Duration.ofSeconds(5)).connect();
        clients.add(c);
        return c;
    }

    @AfterEach
    void stop() {
        clients.forEach(Client::close);
        gateways.forEach(g -> g.server.shutdownNow());
        timers.shutdownNow();
    }

    private static Frame goAway(int drainMs) {
        return Frame.newBuilder().setGoAway(GoAway.newBuilder().setReason("gateway is shutting down").setDrainMs(drainMs)).build();
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** Gives the client a moment to dispatch the GoAway the fake gateway just sent. */
    private static void untilMoving() throws InterruptedException {
        Thread.sleep(100);
    }

    @Test
    void drainWindowKeepsAMargin() {
        assertEquals(19_500, Client.drainWindowMillis(20_000));
        assertEquals(300, Client.drainWindowMillis(600));
        assertEquals(0, Client.drainWindowMillis(0));
    }

    @Test
    void requestInFlightIsAnsweredOnTheOldSessionAndNewWorkWaitsForTheNext() throws Exception {
        FakeGateway g = gateway((s, f) -> {
            if (f.getKindCase() != Frame.KindCase.REQ) {
                return;
            }
            Req r = f.getReq();
            if (s.number == 1) {
                s.send(goAway(20_000));
                timers.schedule(() -> s.send(Frame.newBuilder().setReply(Reply.newBuilder().setReqId(r.getReqId())
                        .setPayload(ByteString.copyFromUtf8("old:").concat(r.getPayload()))).build()), 300, TimeUnit.MILLISECONDS);
            } else {
                s.send(Frame.newBuilder().setReply(Reply.newBuilder().setReqId(r.getReqId())
                        .setPayload(ByteString.copyFromUtf8("new:").concat(r.getPayload()))).build());
            }
        });
        Client c = client(g);
        CompletableFuture<Message> first = c.requestAsync("svc", utf8("first"), Map.of(), Duration.ofSeconds(5));
        FakeSession s1 = g.session(1);
        untilMoving();
        long started = System.currentTimeMillis();
        Message second = c.request("svc", utf8("second"));
        assertEquals("old:first", new String(first.join().payload(), StandardCharsets.UTF_8));
        assertEquals("new:second", new String(second.payload(), StandardCharsets.UTF_8));
        assertTrue(System.currentTimeMillis() - started < 2000, "the move waited for the reconnect backoff");
        assertTrue(s1.halfClosed, "the old session was not half-closed");
        assertEquals(1, s1.of(Frame.KindCase.REQ).size());
        assertEquals("fake-2", c.serverInfo().gatewayId());
    }

    @Test
    void repliesToServedRequestsGoOutBeforeTheHalfClose() throws Exception {
        FakeGateway g = gateway((s, f) -> { });
        Client c = client(g);
        c.serve("svc", "", m -> {
            try {
                Thread.sleep(300);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            return m.payload();
        });
        FakeSession s1 = g.session(1);
        long sid = s1.of(Frame.KindCase.SUB).get(0).getSub().getSid();
        s1.send(Frame.newBuilder().setMsg(Msg.newBuilder().setSid(sid).setSubject("svc").setReplyTo("$nexus.inbox.7")
                .setPayload(ByteString.copyFromUtf8("x")).setDeadlineMs(5000)).build());
        s1.send(goAway(20_000));
        FakeSession s2 = g.session(2);
        assertTrue(s1.halfClosed);
        List<Frame> replies = s1.of(Frame.KindCase.REPLY);
        assertEquals(1, replies.size(), s1.received.toString());
        assertEquals("$nexus.inbox.7", replies.get(0).getReply().getReplyTo());
        assertEquals("x", replies.get(0).getReply().getPayload().toStringUtf8());
        // The responder's subscription is made again on the new session.
        for (int i = 0; i < 100 && s2.of(Frame.KindCase.SUB).stream().noneMatch(f -> f.getSub().getSid() == sid); i++) {
            Thread.sleep(10);
        }
        assertTrue(s2.of(Frame.KindCase.SUB).stream().anyMatch(f -> f.getSub().getSid() == sid));
    }

    @Test
    void unansweredWorkAtTheDeadlineIsHandledAsOnALostSession() throws Exception {
        FakeGateway g = gateway((s, f) -> {
            if (f.getKindCase() != Frame.KindCase.PUB) {
                return;
            }
            if (s.number == 1) {
                s.send(goAway(800)); // window: 400 ms
            } else if (f.getPub().getAckId() != 0) {
                s.send(Frame.newBuilder().setAck(Ack.newBuilder().setAckId(f.getPub().getAckId()).setDelivered(1)).build());
            }
        });
        Client c = client(g);
        CompletableFuture<Message> req = c.requestAsync("svc", utf8("lost"), Map.of(), Duration.ofSeconds(5));
        Thread.sleep(50);
        long started = System.currentTimeMillis();
        assertEquals(1, c.publishAcked("events.a", utf8("confirmed"), Map.of()));
        assertTrue(System.currentTimeMillis() - started < 2000);
        CompletionException e = assertThrows(CompletionException.class, req::join);
        assertInstanceOf(DisconnectedException.class, e.getCause());
        Pub old = g.sessions.get(0).of(Frame.KindCase.PUB).get(0).getPub();
        List<Frame> again = g.sessions.get(1).of(Frame.KindCase.PUB);
        assertEquals(1, again.size());
        assertArrayEquals(old.getId().toByteArray(), again.get(0).getPub().getId().toByteArray());
        assertNotEquals(old.getAckId(), again.get(0).getPub().getAckId());
    }

    @Test
    void closeDuringAMoveDoesNotHang() throws Exception {
        FakeGateway g = gateway((s, f) -> {
            if (f.getKindCase() == Frame.KindCase.REQ && f.getReq().getPayload().toStringUtf8().equals("stuck")) {
                s.send(goAway(20_000));
            }
        });
        Client c = client(g);
        CompletableFuture<Message> stuck = c.requestAsync("svc", utf8("stuck"), Map.of(), Duration.ofSeconds(30));
        g.session(1);
        untilMoving();
        CompletableFuture<Message> gated = CompletableFuture.supplyAsync(() -> c.request("svc", utf8("gated"), Map.of(), Duration.ofSeconds(30)));
        Thread.sleep(100);
        assertFalse(gated.isDone());
        long t0 = System.currentTimeMillis();
        c.close();
        assertTrue(System.currentTimeMillis() - t0 < 1000);
        CompletionException e = assertThrows(CompletionException.class, () -> gated.orTimeout(2, TimeUnit.SECONDS).join());
        assertInstanceOf(ClosedException.class, e.getCause());
        assertThrows(Exception.class, () -> stuck.get(2, TimeUnit.SECONDS));
        assertEquals(1, g.sessions.get(0).of(Frame.KindCase.REQ).size());
    }
}
