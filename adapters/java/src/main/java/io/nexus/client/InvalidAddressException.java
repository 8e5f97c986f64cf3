package io.nexus.client;

/** The gateway address or discovery name is malformed. */
public class InvalidAddressException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public InvalidAddressException(String message) {
        super(message);
    }
}
