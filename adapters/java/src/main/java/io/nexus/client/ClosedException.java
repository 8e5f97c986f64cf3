package io.nexus.client;

/** The client, or this handle, was closed. */
public class ClosedException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public ClosedException(String message) {
        super(message);
    }
}
