package io.nexus.client;

import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Messages of one subscription: {@code next(timeout)} or a blocking {@code for} loop. The
 * buffer is bounded; when it is full the client stops reading from the gateway, whose
 * slow-consumer policy then applies.
 */
public final class Subscription implements Iterable<Message>, AutoCloseable {
    static final Object END = new Object();
    private final Client client;
    private final long sid;
    private final String subject;
    private final String queueGroup;
    final LinkedBlockingQueue<Object> queue;
    volatile boolean closed;
    /** Unsubscribed, but still keeping what the gateway sent before it knew. */
    volatile boolean draining;
    /** No more messages will be added; readers stop once the buffer is empty. */
    private volatile boolean ended;
    volatile long dropped;

    Subscription(Client client, long sid, String subject, String queueGroup, int capacity) {
        this.client = client;
        this.sid = sid;
        this.subject = subject;
        this.queueGroup = queueGroup;
        this.queue = new LinkedBlockingQueue<>(capacity);
    }

    /**
     * The subscription id on this client (kept across reconnections).
     *
     * @return the sid
     */
    public long sid() {
        return sid;
    }

    /**
     * The subject or pattern subscribed to.
     *
     * @return the subject
     */
    public String subject() {
        return subject;
    }

    /**
     * The queue group, empty for a plain subscription.
     *
     * @return the queue group
     */
    public String queueGroup() {
        return queueGroup;
    }

    /** Drop notices received from the gateway's slow-consumer policy. */
    public long dropped() {
        return dropped;
    }

    /**
     * The next message, or null if none arrived within {@code timeout} or the subscription
     * ended (after every buffered message was read).
     *
     * @param timeout how long to wait
     * @return the message, or null
     */
    public Message next(Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        try {
            for (;;) {
                long left = deadline - System.nanoTime();
                Object o = queue.poll(Math.max(0, Math.min(left, 50_000_000L)), TimeUnit.NANOSECONDS);
                if (o == END || (o == null && ended && queue.isEmpty())) {
                    return null;
                }
                if (o != null) {
                    return (Message) o;
                }
                if (left <= 0) {
                    return null;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        }
    }

    /**
     * The next message, waiting as long as needed.
     *
     * @return the message, or null once the subscription ended
     */
    public Message next() {
        Message m;
        do {
            m = next(Duration.ofSeconds(1));
        } while (m == null && !(ended && queue.isEmpty()));
        return m;
    }

    @Override
    public Iterator<Message> iterator() {
        return new Iterator<>() {
            private Message nextMsg;

            @Override
            public boolean hasNext() {
                if (nextMsg == null) {
                    nextMsg = Subscription.this.next();
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

    /**
     * Stops the subscription without losing a message the gateway already sent for it:
     * unsubscribes, waits until the gateway confirmed it, then ends after what is buffered.
     */
    public void drain() {
        client.drainSubscription(this);
    }

    /** Stops the subscription at once; buffered messages can still be read. */
    public void unsubscribe() {
        if (!closed) {
            closed = true;
            client.unsubscribe(sid);
        }
    }

    @Override
    public void close() {
        unsubscribe();
    }

    /**
     * Whether the subscription ended and every buffered message was read.
     *
     * @return true once {@link #next()} returns null for good
     */
    public boolean isEnded() {
        return ended && queue.isEmpty() || queue.peek() == END;
    }

    /** Whether a delivery arriving now is kept (open, or draining). */
    boolean accepts() {
        return !closed || draining;
    }

    void end() {
        closed = true;
        draining = false;
        ended = true;
        queue.offer(END); // when the buffer is full, readers see `ended` once it is empty
    }
}
