package io.nexus.client;

/** A receiver did not keep up: messages were dropped or a stream aborted. */
public class SlowConsumerException extends NexusException {
    public SlowConsumerException(String message) {
        super(message);
    }
}
