package io.nexus.client;

/** A configured limit was hit (payload size, subscriptions, credit...). */
public class LimitException extends NexusException {
    public LimitException(String message) {
        super(message);
    }
}
