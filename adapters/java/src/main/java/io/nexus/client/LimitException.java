package io.nexus.client;

/** A configured limit was hit (payload size, subscriptions, credit...). */
public class LimitException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public LimitException(String message) {
        super(message);
    }
}
