package io.nexus.client;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/** A delivery: a published message, a request to answer, or one frame of a stream. */
public final class Message {
    private final String subject;
    private final byte[] payload;
    private final List<Map.Entry<String, String>> headers;
    private final String replyTo;
    private final long sid;
    private final int deadlineMs;

    Message(String subject, byte[] payload, List<Map.Entry<String, String>> headers, String replyTo, long sid, int deadlineMs) {
        this.subject = subject;
        this.payload = payload;
        this.headers = List.copyOf(headers);
        this.replyTo = replyTo;
        this.sid = sid;
        this.deadlineMs = deadlineMs;
    }

    /**
     * The subject the message was published on.
     *
     * @return the subject
     */
    public String subject() {
        return subject;
    }

    /**
     * The payload (the array itself, not a copy).
     *
     * @return the payload bytes
     */
    public byte[] payload() {
        return payload;
    }

    /** The payload as UTF-8 text. */
    public String text() {
        return new String(payload, StandardCharsets.UTF_8);
    }

    /** Headers in order (keys may repeat). */
    public List<Map.Entry<String, String>> headers() {
        return headers;
    }

    /** First value of header {@code key} (case-insensitive), or null. */
    public String header(String key) {
        for (var h : headers) {
            if (h.getKey().equalsIgnoreCase(key)) {
                return h.getValue();
            }
        }
        return null;
    }

    /** The W3C traceparent the message carries. */
    public String traceparent() {
        return header(Tracing.TRACEPARENT);
    }

    /** The inbox to answer for a request, or the publisher's reply_to. */
    public String replyTo() {
        return replyTo;
    }

    /** The subscription this delivery is for. */
    public long sid() {
        return sid;
    }

    /** For requests: milliseconds left before the requester gives up. */
    public int deadlineMs() {
        return deadlineMs;
    }

    /** True when the sender waits for an answer. */
    public boolean isRequest() {
        return replyTo.startsWith("$nexus.inbox.") && deadlineMs > 0;
    }
}
