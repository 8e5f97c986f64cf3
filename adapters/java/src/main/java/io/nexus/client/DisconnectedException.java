package io.nexus.client;

/** The session broke while the operation was in flight; the client reconnects on its own. */
public class DisconnectedException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public DisconnectedException(String message) {
        super(message);
    }
}
