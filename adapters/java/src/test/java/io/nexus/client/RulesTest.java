package io.nexus.client;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * Unit tests of the Java adapter's pure parts: subject rules, traceparent handling and SRV
 * ordering (everything that talks to a gateway is covered by the conformance suite against
 * real processes). A plain main, so that it runs with the Debian jars alone:
 * {@code java -cp <classpath>:<test classes> io.nexus.client.RulesTest}.
 */
public final class RulesTest {
    private static int checks;

    private static void check(boolean ok, String what) {
        checks++;
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static void rejects(Runnable r, String what) {
        try {
            r.run();
        } catch (InvalidSubjectException e) {
            checks++;
            return;
        }
        throw new AssertionError("accepted " + what);
    }

    public static void main(String[] args) {
        for (String ok : List.of("orders.created", "a", "$nexus", "$nexusx.a", "ordres.ü")) {
            Subjects.validatePublish(ok);
        }
        for (String bad : List.of("", "a..b", ".a", "a.", "a b", "orders.*", "orders.>", "$nexus.inbox.1", "x".repeat(513))) {
            rejects(() -> Subjects.validatePublish(bad), bad);
        }
        for (String ok : List.of("orders.*", "orders.>", "*.created.>", ">")) {
            Subjects.validatePattern(ok);
        }
        for (String bad : List.of("a.>.b", "a*", ">>", "$nexus.x")) {
            rejects(() -> Subjects.validatePattern(bad), bad);
        }
        check(Subjects.matches("orders.*", "orders.x"), "orders.* matches orders.x");
        check(!Subjects.matches("orders.*", "orders.a.b"), "orders.* does not match orders.a.b");
        check(!Subjects.matches("orders.>", "orders"), "orders.> does not match orders");
        check(Subjects.matches("*.created.>", "orders.created.eu"), "*.created.> matches orders.created.eu");

        for (int i = 0; i < 100; i++) {
            check(Tracing.isValid(Tracing.newTraceparent(null)), "fresh traceparent is valid");
        }
        check(!Tracing.isValid("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), "version ff is invalid");
        String prev = Tracing.setCurrent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        var headers = Tracing.ensure(List.of());
        Tracing.setCurrent(prev);
        check(headers.get(0).getValue().split("-")[1].equals("4bf92f3577b34da6a3ce929d0e0e4736"), "child keeps the trace id");

        List<Discovery.Srv> records = List.of(new Discovery.Srv(20, 1, 1, "late"), new Discovery.Srv(10, 90, 1, "heavy"),
                new Discovery.Srv(10, 10, 1, "light"), new Discovery.Srv(10, 0, 1, "zero"));
        Map<String, Integer> firsts = new HashMap<>();
        Random rng = new Random(7);
        for (int i = 0; i < 2000; i++) {
            List<Discovery.Srv> order = Discovery.orderSrv(records, rng);
            check(order.get(3).target().equals("late"), "lower priority value first");
            firsts.merge(order.get(0).target(), 1, Integer::sum);
        }
        check(firsts.getOrDefault("heavy", 0) > 1600, "weights: " + firsts);
        check(firsts.getOrDefault("light", 0) > 100, "weights: " + firsts);
        check(!firsts.containsKey("zero"), "weight 0 never first: " + firsts);

        Discovery srv = new Discovery("nexus+srv://us-east.nexus.local?dns=127.0.0.1:5353", null);
        check(srv.isSrv() && srv.srvName.equals("_nexus._tcp.us-east.nexus.local"), "srv name");
        check(new Discovery("http://127.0.0.1:7422", null).endpoints().get(0).address().equals("127.0.0.1:7422"), "direct");
        try {
            new Discovery("ftp://x:1", null);
            throw new AssertionError("accepted ftp://");
        } catch (InvalidAddressException e) {
            checks++;
        }
        System.out.println("java unit tests: " + checks + " checks passed");
    }
}
