package io.nexus.client;

/** No subscription matched a request or stream open. */
public class NoRespondersException extends NexusException {
    public NoRespondersException(String message) {
        super(message);
    }
}
