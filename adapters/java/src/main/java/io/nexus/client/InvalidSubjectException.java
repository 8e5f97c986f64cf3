package io.nexus.client;

/** The subject or pattern is malformed or reserved (checked locally before sending). */
public class InvalidSubjectException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public InvalidSubjectException(String message) {
        super(message);
    }
}
