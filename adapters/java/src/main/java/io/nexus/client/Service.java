package io.nexus.client;

import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;

/** A responder started by {@link Client#serve}; {@link #stop()} ends it. */
public final class Service implements AutoCloseable {
    /** Answers one request: returns the reply payload; throwing answers with an error. */
    @FunctionalInterface
    public interface Handler {
        byte[] handle(Message request) throws Exception;
    }

    private final Client client;
    private final Subscription sub;
    private final Thread loop;

    Service(Client client, Subscription sub, Handler handler, ExecutorService executor) {
        this.client = client;
        this.sub = sub;
        this.loop = new Thread(() -> {
            for (Message m : sub) {
                executor.submit(() -> handle(handler, m));
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

    public String subject() {
        return sub.subject();
    }

    /** Stops answering. */
    public void stop() {
        sub.unsubscribe();
    }

    @Override
    public void close() {
        stop();
    }
}
