package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The Java adapter's pure parts: traceparent handling, SRV ordering, address parsing and
 * option validation (everything that talks to a gateway is covered by the conformance suite
 * and {@link ReadmeTest} against real processes).
 */
class RulesTest {
    @Test
    void freshTraceparentsAreValidAndChildrenKeepTheTraceId() {
        for (int i = 0; i < 100; i++) {
            assertTrue(Tracing.isValid(Tracing.newTraceparent(null)));
        }
        assertFalse(Tracing.isValid("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        String prev = Tracing.setCurrent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        var headers = Tracing.ensure(List.of());
        Tracing.setCurrent(prev);
        assertEquals("4bf92f3577b34da6a3ce929d0e0e4736", headers.get(0).getValue().split("-")[1]);
    }

    @Test
    void srvRecordsByPriorityThenWeight() {
        List<Discovery.Srv> records = List.of(new Discovery.Srv(20, 1, 1, "late"), new Discovery.Srv(10, 90, 1, "heavy"),
                new Discovery.Srv(10, 10, 1, "light"), new Discovery.Srv(10, 0, 1, "zero"));
        Map<String, Integer> firsts = new HashMap<>();
        Random rng = new Random(7);
        for (int i = 0; i < 2000; i++) {
            List<Discovery.Srv> order = Discovery.orderSrv(records, rng);
            assertEquals("late", order.get(3).target());
            firsts.merge(order.get(0).target(), 1, Integer::sum);
        }
        assertTrue(firsts.getOrDefault("heavy", 0) > 1600, firsts::toString);
        assertTrue(firsts.getOrDefault("light", 0) > 100, firsts::toString);
        assertFalse(firsts.containsKey("zero"), firsts::toString);
    }

    @Test
    void addresses() {
        Discovery srv = new Discovery("nexus+srv://us-east.nexus.local?dns=127.0.0.1:5353", null);
        assertTrue(srv.isSrv());
        assertEquals("_nexus._tcp.us-east.nexus.local", srv.srvName);
        assertEquals("127.0.0.1:7422", new Discovery("http://127.0.0.1:7422", null).endpoints().get(0).address());
        assertThrows(InvalidAddressException.class, () -> new Discovery("ftp://x:1", null));
    }

    @Test
    void optionsOutOfRangeAreRefusedWithTheirName() {
        var b = Client.builder("http://127.0.0.1:1");
        var e = assertThrows(IllegalArgumentException.class, () -> b.publishRetryTimeout(Duration.ofSeconds(-1)));
        assertTrue(e.getMessage().contains("publishRetryTimeout"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> b.streamWindow(0));
        assertTrue(e.getMessage().contains("streamWindow"), e.getMessage());
    }
}
