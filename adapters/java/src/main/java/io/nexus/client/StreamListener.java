package io.nexus.client;

import java.time.Duration;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/** Accepts streams opened to a subject. */
public final class StreamListener implements AutoCloseable {
    private static final Object END = new Object();
    private final Client client;
    private final long sid;
    private final String subject;
    private final String queueGroup;
    private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();

    StreamListener(Client client, long sid, String subject, String queueGroup) {
        this.client = client;
        this.sid = sid;
        this.subject = subject;
        this.queueGroup = queueGroup;
    }

    /**
     * The subject (or pattern) the listener accepts streams on.
     *
     * @return the subject
     */
    public String subject() {
        return subject;
    }

    String queueGroup() {
        return queueGroup;
    }

    long sid() {
        return sid;
    }

    /** The next stream opened to the subject; null on timeout or once the listener is closed. */
    public BiStream accept(Duration timeout) {
        try {
            Object o = queue.poll(timeout.toMillis(), TimeUnit.MILLISECONDS);
            if (o == END) {
                queue.offer(END);
                return null;
            }
            return (BiStream) o;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return null;
        }
    }

    /** Stops accepting streams. */
    @Override
    public void close() {
        client.unsubscribe(sid);
        end();
    }

    void offer(BiStream s) {
        queue.add(s);
    }

    void end() {
        queue.add(END);
    }
}
