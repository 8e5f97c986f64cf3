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
    volatile long dropped;

    Subscription(Client client, long sid, String subject, String queueGroup, int capacity) {
        this.client = client;
        this.sid = sid;
        this.subject = subject;
        this.queueGroup = queueGroup;
        this.queue = new LinkedBlockingQueue<>(capacity);
    }

    public long sid() {
        return sid;
    }

    public String subject() {
        return subject;
    }

    public String queueGroup() {
        return queueGroup;
    }

    /** Drop notices received from the gateway's slow-consumer policy. */
    public long dropped() {
        return dropped;
    }

    /** The next message, or null if none arrived within {@code timeout} or the subscription ended. */
    public Message next(Duration timeout) {
        try {
            Object o = queue.poll(timeout.toMillis(), TimeUnit.MILLISECONDS);
            if (o == END) {
                queue.offer(END);
                return null;
            }
            return (Message) o;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        }
    }

    /** The next message, waiting as long as needed; null once the subscription ended. */
    public Message next() {
        try {
            Object o = queue.take();
            if (o == END) {
                queue.offer(END);
                return null;
            }
            return (Message) o;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ClosedException("interrupted");
        }
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

    /** Stops the subscription; buffered messages can still be read. */
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

    void end() {
        closed = true;
        queue.clear();
        queue.offer(END);
    }
}
