package io.nexus.client;

/** An error code from the gateway that has no more specific exception. */
public class GatewayException extends NexusException {
    /** The raw nexus.v1.ErrorCode value. */
    private final int code;

    /**
     * Creates the exception.
     *
     * @param code the raw nexus.v1.ErrorCode value
     * @param message the gateway's message
     */
    public GatewayException(int code, String message) {
        super("gateway error " + code + ": " + message);
        this.code = code;
    }

    /** The raw nexus.v1.ErrorCode value. */
    public int code() {
        return code;
    }
}
