package io.nexus.client;

/** The gateway address or discovery name is malformed. */
public class InvalidAddressException extends NexusException {
    public InvalidAddressException(String message) {
        super(message);
    }
}
