package io.nexus.client;

import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * W3C traceparent handling. The current trace context is a thread-local: handlers run by
 * {@link Client#serve} see the request's traceparent, so requests and publishes they make
 * continue the same trace (same trace id, new span id).
 */
public final class Tracing {
    /** The header key. */
    public static final String TRACEPARENT = "traceparent";
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final Pattern LAYOUT = Pattern.compile("^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$");
    private static final ThreadLocal<String> CURRENT = new ThreadLocal<>();

    private Tracing() {}

    /** The traceparent of the work in progress on this thread, or null. */
    public static String current() {
        return CURRENT.get();
    }

    /** Sets (or clears, with null) the current traceparent; returns the previous one. */
    public static String setCurrent(String traceparent) {
        String prev = CURRENT.get();
        if (traceparent == null) {
            CURRENT.remove();
        } else {
            CURRENT.set(traceparent);
        }
        return prev;
    }

    private static String hex(int bytes) {
        byte[] b = new byte[bytes];
        RANDOM.nextBytes(b);
        StringBuilder sb = new StringBuilder();
        for (byte x : b) {
            sb.append(String.format("%02x", x));
        }
        return sb.toString();
    }

    /** A fresh traceparent; continues {@code traceId} when given. */
    public static String newTraceparent(String traceId) {
        String trace = traceId != null ? traceId : hex(16);
        if (trace.matches("0+")) {
            trace = "0".repeat(31) + "1";
        }
        String span = hex(8);
        if (span.matches("0+")) {
            span = "0".repeat(15) + "1";
        }
        return "00-" + trace + "-" + span + "-01";
    }

    /** True if the value has the layout the gateway accepts. */
    public static boolean isValid(String v) {
        if (v == null) {
            return false;
        }
        var m = LAYOUT.matcher(v);
        return m.matches() && !m.group(1).equals("ff") && !m.group(2).matches("0+") && !m.group(3).matches("0+");
    }

    static List<Map.Entry<String, String>> ensure(List<Map.Entry<String, String>> headers) {
        List<Map.Entry<String, String>> out = new ArrayList<>(headers);
        for (var h : out) {
            if (h.getKey().equalsIgnoreCase(TRACEPARENT)) {
                return out;
            }
        }
        String parent = current();
        String trace = isValid(parent) ? parent.split("-")[1] : null;
        out.add(Map.entry(TRACEPARENT, newTraceparent(trace)));
        return out;
    }
}
