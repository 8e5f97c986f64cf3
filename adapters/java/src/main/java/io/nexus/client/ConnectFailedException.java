package io.nexus.client;

/** Connecting to a gateway failed. */
public class ConnectFailedException extends NexusException {
    public ConnectFailedException(String message) {
        super(message);
    }
}
