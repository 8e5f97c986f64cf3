package io.nexus.client;

/** No subscription matched a request or stream open. */
public class NoRespondersException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public NoRespondersException(String message) {
        super(message);
    }
}
