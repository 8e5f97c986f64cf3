package io.nexus.client;

/** Authentication or authorization failure (API key refused or out of scope). */
public class DeniedException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public DeniedException(String message) {
        super(message);
    }
}
