package io.nexus.client;

/** The client, or this handle, was closed. */
public class ClosedException extends NexusException {
    public ClosedException(String message) {
        super(message);
    }
}
