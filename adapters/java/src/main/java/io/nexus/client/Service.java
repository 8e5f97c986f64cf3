package io.nexus.client;

import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Phaser;

/** A responder started by {@link Client#serve}; {@link #stop()} ends it. */
public final class Service implements AutoCloseable {
    /** Answers one request: returns the reply payload; throwing answers with an error. */
    @FunctionalInterface
    public interface Handler {
        /**
         * Answers one request.
         *
         * @param request the request
         * @return the reply payload
         * @throws Exception to answer with an error ({@link ServiceException} carries its message)
         */
        byte[] handle(Message request) throws Exception;
    }

    private final Client client;
    private final Subscription sub;
    private final Thread loop;
    /** Handlers in progress (one party per handler, plus the service itself). */
    private final Phaser inFlight = new Phaser(1);

    Service(Client client, Subscription sub, Handler handler, ExecutorService executor) {
        this.client = client;
        this.sub = sub;
        this.loop = new Thread(() -> {
            for (Message m : sub) {
                inFlight.register();
                executor.submit(() -> {
                    try {
                        handle(handler, m);
                    } finally {
                        inFlight.arriveAndDeregister();
                    }
                });
            }
        }, "nexus-service-" + sub.subject());
        loop.setDaemon(true);
        loop.start();
    }

    private void handle(Handler handler, Message m) {
        String prev = Tracing.setCurrent(m.traceparent());
        try {
            byte[] reply;
            try {
                reply = handler.handle(m);
            } catch (ServiceException e) {
                client.replyError(m, e.getMessage());
                return;
            } catch (Exception e) {
                client.replyError(m, e.getClass().getSimpleName() + ": " + e.getMessage());
                return;
            }
            if (!m.replyTo().isEmpty()) {
                client.reply(m, reply == null ? new byte[0] : reply, List.<Map.Entry<String, String>>of());
            }
        } catch (NexusException e) {
            // the session broke; the gateway tells the requester
        } finally {
            Tracing.setCurrent(prev);
        }
    }

    /**
     * The subject served.
     *
     * @return the subject (pattern)
     */
    public String subject() {
        return sub.subject();
    }

    /** Stops answering. */
    public void stop() {
        sub.unsubscribe();
    }

    /** Stops taking requests, answers those already received, then returns. */
    public void drain() {
        sub.drain();
        try {
            loop.join();
            inFlight.awaitAdvanceInterruptibly(inFlight.arrive());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public void close() {
        stop();
    }
}
