package io.nexus.client;

/** Authentication or authorization failure (API key refused or out of scope). */
public class DeniedException extends NexusException {
    public DeniedException(String message) {
        super(message);
    }
}
