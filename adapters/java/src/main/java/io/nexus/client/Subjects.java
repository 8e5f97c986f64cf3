package io.nexus.client;

import java.nio.charset.StandardCharsets;

/** Subject and pattern rules (docs/protocol.md section 5), checked before anything is sent. */
public final class Subjects {
    /** Subjects with this prefix belong to the gateway. */
    public static final String RESERVED_PREFIX = "$nexus.";

    private Subjects() {}

    private static String[] tokens(String s) {
        if (s == null || s.isEmpty()) {
            throw new InvalidSubjectException("invalid subject \"\": empty");
        }
        if (s.getBytes(StandardCharsets.UTF_8).length > 512) {
            throw bad(s, "longer than 512 bytes");
        }
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (Character.isWhitespace(c) || Character.isSpaceChar(c) || Character.isISOControl(c)) {
                throw bad(s, "contains whitespace or a control character");
            }
        }
        String[] t = s.split("\\.", -1);
        for (String x : t) {
            if (x.isEmpty()) {
                throw bad(s, "empty token");
            }
        }
        return t;
    }

    private static InvalidSubjectException bad(String s, String why) {
        return new InvalidSubjectException("invalid subject \"" + s + "\": " + why);
    }

    /** Throws InvalidSubjectException unless {@code subject} may be published to. */
    public static void validatePublish(String subject) {
        for (String t : tokens(subject)) {
            if (t.contains("*") || t.contains(">")) {
                throw bad(subject, "wildcards are only allowed in subscriptions");
            }
        }
        if (subject.startsWith(RESERVED_PREFIX)) {
            throw bad(subject, "subjects starting with " + RESERVED_PREFIX + " are reserved");
        }
    }

    /** Throws InvalidSubjectException unless {@code pattern} is a valid subscription pattern. */
    public static void validatePattern(String pattern) {
        String[] t = tokens(pattern);
        for (int i = 0; i < t.length; i++) {
            if (t[i].equals(">") && i != t.length - 1) {
                throw bad(pattern, "'>' is only allowed as the last token");
            }
            if (!t[i].equals("*") && !t[i].equals(">") && (t[i].contains("*") || t[i].contains(">"))) {
                throw bad(pattern, "wildcards must be whole tokens");
            }
        }
        if (pattern.startsWith(RESERVED_PREFIX)) {
            throw bad(pattern, "patterns starting with " + RESERVED_PREFIX + " are reserved");
        }
    }

    /** True when {@code subject} matches {@code pattern}. */
    public static boolean matches(String pattern, String subject) {
        String[] p = pattern.split("\\."), s = subject.split("\\.");
        for (int i = 0; i < p.length; i++) {
            if (p[i].equals(">")) {
                return s.length > i;
            }
            if (i >= s.length || (!p[i].equals("*") && !p[i].equals(s[i]))) {
                return false;
            }
        }
        return p.length == s.length;
    }
}
