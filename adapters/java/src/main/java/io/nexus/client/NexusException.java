package io.nexus.client;

/** Base class of every exception the Java adapter throws (unchecked, like gRPC's). */
public class NexusException extends RuntimeException {
    public NexusException(String message) {
        super(message);
    }

    public NexusException(String message, Throwable cause) {
        super(message, cause);
    }
}
