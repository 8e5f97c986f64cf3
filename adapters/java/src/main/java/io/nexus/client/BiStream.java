package io.nexus.client;

import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.LinkedBlockingQueue;
import nexus.v1.GatewayOuterClass;

/**
 * One bidirectional stream with credit-based flow control (docs/protocol.md section 8).
 * {@link #send} blocks until the peer granted credit; the receiving side grants a window of W
 * frames at the start and W/2 again each time the application consumed W/2.
 */
public final class BiStream implements Iterable<Message> {
    private static final Object END = new Object();
    private final Client client;
    private final long id;
    private final String subject;
    private final List<Map.Entry<String, String>> headers;
    private final int window;
    private final LinkedBlockingQueue<Object> inbox = new LinkedBlockingQueue<>();
    final CompletableFuture<Void> opened = new CompletableFuture<>();
    private long credit;
    private int consumed;
    private NexusException error;
    private boolean sentClose;
    private volatile boolean peerClosed;

    BiStream(Client client, long id, String subject, List<Map.Entry<String, String>> headers, long credit, int window) {
        this.client = client;
        this.id = id;
        this.subject = subject;
        this.headers = headers;
        this.credit = credit;
        this.window = Math.max(1, window);
    }

    /**
     * The stream's id on this session.
     *
     * @return the stream id
     */
    public long id() {
        return id;
    }

    /**
     * The subject the stream was opened on.
     *
     * @return the subject
     */
    public String subject() {
        return subject;
    }

    /**
     * The headers of the stream open (for an accepted stream: the opener's, traceparent
     * included).
     *
     * @return the headers, in order
     */
    public List<Map.Entry<String, String>> headers() {
        return headers;
    }

    /** Frames that may be sent now without waiting. */
    public synchronized long credit() {
        return credit;
    }

    /** Sends one frame, blocking until the peer granted credit for it. */
    public void send(byte[] payload) {
        client.checkPayload(payload);
        synchronized (this) {
            while (credit <= 0 && error == null && !sentClose) {
                try {
                    wait();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new ClosedException("interrupted");
                }
            }
            if (error != null) {
                throw error;
            }
            if (sentClose) {
                throw new ClosedException("stream already finished");
            }
            credit--;
        }
        client.enqueue(GatewayOuterClass.Frame.newBuilder()
                .setStreamData(GatewayOuterClass.StreamData.newBuilder().setStreamId(id)
                        .setPayload(com.google.protobuf.ByteString.copyFrom(payload)))
                .build(), 64 + payload.length, false);
    }

    /** Half-closes: this side sends no more data (the peer may still send). */
    public void finish() {
        synchronized (this) {
            if (sentClose || error != null) {
                return;
            }
            sentClose = true;
            notifyAll();
        }
        client.enqueue(GatewayOuterClass.Frame.newBuilder()
                .setStreamClose(GatewayOuterClass.StreamClose.newBuilder().setStreamId(id)).build(), 64, false);
        maybeForget();
    }

    /** Ends the stream at once in both directions. */
    public void abort(String reason) {
        synchronized (this) {
            if (error != null) {
                return;
            }
        }
        fail(new ClosedException("stream aborted: " + reason));
        client.enqueueNow(GatewayOuterClass.Frame.newBuilder().setStreamClose(GatewayOuterClass.StreamClose.newBuilder()
                .setStreamId(id).setError(GatewayOuterClass.Error.newBuilder()
                        .setCode(GatewayOuterClass.ErrorCode.SERVICE_ERROR).setMessage(reason).setRefId(id))).build());
    }

    /** The next frame from the peer, or null once it half-closed; throws if the stream was aborted. */
    public Message recv() {
        Object o;
        try {
            o = inbox.take();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        }
        if (o == END) {
            inbox.offer(END);
            synchronized (this) {
                if (error != null) {
                    throw error;
                }
            }
            return null;
        }
        int grant = 0;
        synchronized (this) {
            consumed++;
            if (consumed >= Math.max(1, window / 2) && !peerClosed) {
                grant = consumed;
                consumed = 0;
            }
        }
        if (grant > 0) {
            client.enqueueNow(GatewayOuterClass.Frame.newBuilder()
                    .setCredit(GatewayOuterClass.Credit.newBuilder().setStreamId(id).setCredits(grant)).build());
        }
        return (Message) o;
    }

    @Override
    public Iterator<Message> iterator() {
        return new Iterator<>() {
            private Message nextMsg;

            @Override
            public boolean hasNext() {
                if (nextMsg == null) {
                    nextMsg = recv();
                }
                return nextMsg != null;
            }

            @Override
            public Message next() {
                if (!hasNext()) {
                    throw new NoSuchElementException();
                }
                Message m = nextMsg;
                nextMsg = null;
                return m;
            }
        };
    }

    synchronized void onCredit(long n) {
        credit += n;
        opened.complete(null);
        notifyAll();
    }

    void onData(GatewayOuterClass.StreamData d) {
        opened.complete(null);
        inbox.add(new Message(subject, d.getPayload().toByteArray(), Client.headersOf(d.getHeadersList()), "", 0, 0));
    }

    void onClose(GatewayOuterClass.StreamClose c) {
        if (c.hasError()) {
            fail(Errors.fromError(c.getError(), subject));
            return;
        }
        opened.complete(null);
        peerClosed = true;
        inbox.add(END);
        maybeForget();
    }

    void fail(NexusException e) {
        synchronized (this) {
            if (error == null) {
                error = e;
            }
            notifyAll();
        }
        opened.completeExceptionally(e);
        inbox.add(END);
        client.forgetStream(id);
    }

    private void maybeForget() {
        boolean both;
        synchronized (this) {
            both = sentClose && peerClosed;
        }
        if (both) {
            client.forgetStream(id);
        }
    }
}
