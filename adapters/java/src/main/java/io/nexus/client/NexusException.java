package io.nexus.client;

/** Base class of every exception the Java adapter throws (unchecked, like gRPC's). */
public class NexusException extends RuntimeException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public NexusException(String message) {
        super(message);
    }

    /**
     * Creates the exception with its cause.
     *
     * @param message what happened
     * @param cause the underlying failure
     */
    public NexusException(String message, Throwable cause) {
        super(message, cause);
    }
}
