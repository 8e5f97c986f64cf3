package io.nexus.client;

/** A receiver did not keep up: messages were dropped or a stream aborted. */
public class SlowConsumerException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public SlowConsumerException(String message) {
        super(message);
    }
}
