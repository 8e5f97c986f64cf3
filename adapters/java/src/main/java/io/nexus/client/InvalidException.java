package io.nexus.client;

/** The gateway considered a frame or field malformed. */
public class InvalidException extends NexusException {
    public InvalidException(String message) {
        super(message);
    }
}
