package io.nexus.client;

/** An error code from the gateway that has no more specific exception. */
public class GatewayException extends NexusException {
    private final int code;

    public GatewayException(int code, String message) {
        super("gateway error " + code + ": " + message);
        this.code = code;
    }

    /** The raw nexus.v1.ErrorCode value. */
    public int code() {
        return code;
    }
}
