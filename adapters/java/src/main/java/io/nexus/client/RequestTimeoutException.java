package io.nexus.client;

/** A request got no answer in time. */
public class RequestTimeoutException extends NexusException {
    public RequestTimeoutException(String message) {
        super(message);
    }
}
