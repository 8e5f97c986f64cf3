package io.nexus.client;

/** The responder refused the request or vanished; handlers throw it to answer with an error. */
public class ServiceException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public ServiceException(String message) {
        super(message);
    }
}
