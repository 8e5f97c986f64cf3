package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Server;
import io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.IntFunction;
import nexus.v1.GatewayGrpc;
import nexus.v1.GatewayOuterClass.Batch;
import nexus.v1.GatewayOuterClass.Frame;
import nexus.v1.GatewayOuterClass.Welcome;
import org.junit.jupiter.api.Test;

/**
 * Gateway discovery through DNS SRV ({@code nexus+srv://}), against in-process gateways (grpc-java
 * servers answering Hello with Welcome) and an in-process DNS responder (UDP) whose SRV answer the
 * test chooses per query.
 */
class DiscoveryTest {
    /** A gateway that answers Hello with Welcome (its id {@code gatewayId}) and keeps the session open. */
    static Server gateway(String gatewayId) throws Exception {
        GatewayGrpc.GatewayImplBase service = new GatewayGrpc.GatewayImplBase() {
            @Override
            public StreamObserver<Batch> session(StreamObserver<Batch> responses) {
                return new StreamObserver<>() {
                    @Override
                    public void onNext(Batch b) {
                        for (Frame f : b.getFramesList()) {
                            if (f.getKindCase() == Frame.KindCase.HELLO) {
                                synchronized (responses) {
                                    responses.onNext(Batch.newBuilder().addFrames(Frame.newBuilder().setWelcome(
                                            Welcome.newBuilder().setSessionId("1").setGatewayId(gatewayId).setProtocol(1))).build());
                                }
                            }
                        }
                    }

                    @Override
                    public void onError(Throwable t) {}

                    @Override
                    public void onCompleted() {
                        synchronized (responses) {
                            responses.onCompleted();
                        }
                    }
                };
            }
        };
        return NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0)).addService(service).build().start();
    }

    /** One SRV record of the answer: target {@code <name>.gw.r.example} at 127.0.0.1. */
    record Rec(String name, int port, int priority) {}

    /**
     * A DNS responder on 127.0.0.1 (UDP): SRV queries get {@code srv.apply(n)} for the n-th SRV
     * query (1-based), A queries of {@code <name>.gw.r.example} get 127.0.0.1.
     */
    static final class FakeDns implements AutoCloseable {
        final DatagramSocket socket;
        final AtomicInteger srvQueries = new AtomicInteger();
        final Thread thread;

        FakeDns(IntFunction<List<Rec>> srv) throws Exception {
            socket = new DatagramSocket(new InetSocketAddress("127.0.0.1", 0));
            thread = new Thread(() -> {
                byte[] buf = new byte[512];
                while (!socket.isClosed()) {
                    try {
                        DatagramPacket p = new DatagramPacket(buf, buf.length);
                        socket.receive(p);
                        byte[] reply = answer(ByteBuffer.wrap(p.getData(), 0, p.getLength()), srv);
                        socket.send(new DatagramPacket(reply, reply.length, p.getSocketAddress()));
                    } catch (Exception e) {
                        // closed, or a query this responder does not understand
                    }
                }
            }, "fake-dns");
            thread.setDaemon(true);
            thread.start();
        }

        String server() {
            return "127.0.0.1:" + socket.getLocalPort();
        }

        private byte[] answer(ByteBuffer q, IntFunction<List<Rec>> srv) {
            int id = q.getShort(0) & 0xffff;
            q.position(12);
            while (q.get(q.position()) != 0) {
                q.position(q.position() + 1 + q.get(q.position()));
            }
            q.get();
            int type = q.getShort() & 0xffff;
            q.getShort();
            byte[] question = new byte[q.position() - 12];
            q.get(12, question);
            ByteArrayOutputStream rr = new ByteArrayOutputStream();
            int count = 0;
            if (type == 33) {
                for (Rec r : srv.apply(srvQueries.incrementAndGet())) {
                    byte[] target = name(r.name() + ".gw.r.example");
                    ByteBuffer b = ByteBuffer.allocate(12 + 6 + target.length);
                    b.putShort((short) 0xc00c).putShort((short) 33).putShort((short) 1).putInt(60).putShort((short) (6 + target.length));
                    b.putShort((short) r.priority()).putShort((short) 1).putShort((short) r.port()).put(target);
                    rr.writeBytes(b.array());
                    count++;
                }
            } else if (type == 1) {
                ByteBuffer b = ByteBuffer.allocate(16);
                b.putShort((short) 0xc00c).putShort((short) 1).putShort((short) 1).putInt(60).putShort((short) 4).put(new byte[] {127, 0, 0, 1});
                rr.writeBytes(b.array());
                count++;
            }
            ByteBuffer out = ByteBuffer.allocate(12 + question.length + rr.size());
            out.putShort((short) id).putShort((short) 0x8580).putShort((short) 1).putShort((short) count).putShort((short) 0).putShort((short) 0);
            out.put(question).put(rr.toByteArray());
            return out.array();
        }

        private static byte[] name(String dotted) {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            for (String label : dotted.split("\\.")) {
                byte[] l = label.getBytes(StandardCharsets.US_ASCII);
                b.write(l.length);
                b.writeBytes(l);
            }
            b.write(0);
            return b.toByteArray();
        }

        @Override
        public void close() {
            socket.close();
        }
    }

    /**
     * The SRV answer cached when the client connected lists only gateway a (b was down then).
     * When a dies, the round that tries the cached answer fails; the client asks DNS again at
     * once and reaches b in the same round, without a failed round and its doubled backoff (the
     * failover measurement's slow tail).
     */
    @Test
    void aCachedAnswerThatFailedIsResolvedAgainBeforeBackingOff() throws Exception {
        Server a = gateway("a");
        Server b = gateway("b");
        List<List<Rec>> answers = List.of(
                List.of(new Rec("a", a.getPort(), 1)),
                List.of(new Rec("a", a.getPort(), 1), new Rec("b", b.getPort(), 2)));
        try (FakeDns dns = new FakeDns(n -> answers.get(Math.min(n, answers.size()) - 1))) {
            Client client = Client.builder("nexus+srv://r.example?dns=" + dns.server())
                    .reconnectBackoff(Duration.ofMillis(50), Duration.ofMillis(50))
                    .connect();
            try {
                assertEquals("a", client.serverInfo().gatewayId());
                a.shutdownNow();
                long deadline = System.currentTimeMillis() + 5000;
                while (client.serverInfo() == null || !client.serverInfo().gatewayId().equals("b")) {
                    assertTrue(System.currentTimeMillis() < deadline, "the client did not move to b: " + client.lastError());
                    Thread.sleep(10);
                }
                assertEquals(2, dns.srvQueries.get());
                assertFalse(client.lastError() instanceof NoGatewayException, "a failed round: " + client.lastError());
            } finally {
                client.close();
            }
        } finally {
            a.shutdownNow();
            b.shutdownNow();
        }
    }
}
