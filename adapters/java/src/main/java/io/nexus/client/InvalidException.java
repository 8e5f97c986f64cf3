package io.nexus.client;

/** The gateway considered a frame or field malformed. */
public class InvalidException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public InvalidException(String message) {
        super(message);
    }
}
