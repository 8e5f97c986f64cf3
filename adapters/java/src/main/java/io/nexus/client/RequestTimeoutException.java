package io.nexus.client;

/** A request got no answer in time. */
public class RequestTimeoutException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public RequestTimeoutException(String message) {
        super(message);
    }
}
