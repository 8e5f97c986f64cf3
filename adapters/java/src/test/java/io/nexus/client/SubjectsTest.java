package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** Subject and pattern rules (docs/protocol.md section 5), checked before anything is sent. */
class SubjectsTest {
    @Test
    void publishSubjects() {
        for (String ok : new String[] {"orders.created", "a", "$nexus", "$nexusx.a", "ordres.ü"}) {
            assertDoesNotThrow(() -> Subjects.validatePublish(ok), ok);
        }
        for (String bad : new String[] {"", "a..b", ".a", "a.", "a b", "orders.*", "orders.>", "$nexus.inbox.1", "x".repeat(513)}) {
            assertThrows(InvalidSubjectException.class, () -> Subjects.validatePublish(bad), bad);
        }
    }

    @Test
    void patterns() {
        for (String ok : new String[] {"orders.*", "orders.>", "*.created.>", ">"}) {
            assertDoesNotThrow(() -> Subjects.validatePattern(ok), ok);
        }
        for (String bad : new String[] {"a.>.b", "a*", ">>", "$nexus.x"}) {
            assertThrows(InvalidSubjectException.class, () -> Subjects.validatePattern(bad), bad);
        }
    }

    @Test
    void matching() {
        assertTrue(Subjects.matches("orders.*", "orders.x"));
        assertFalse(Subjects.matches("orders.*", "orders.a.b"));
        assertFalse(Subjects.matches("orders.>", "orders"));
        assertTrue(Subjects.matches("*.created.>", "orders.created.eu"));
    }
}
