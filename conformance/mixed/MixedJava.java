import io.nexus.client.Client;
import io.nexus.client.Message;
import io.nexus.client.NoRespondersException;
import io.nexus.client.Tracing;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;

/**
 * The Java side of the mixed-language test (conformance/mixed/run.py):
 * {@code serve URL SUBJECT} answers requests until killed (printing "ready" once subscribed);
 * {@code call URL SUBJECT PAYLOAD TRACEPARENT} sends one request, retrying while the other
 * region's responder is not known yet, and prints the answer.
 */
public final class MixedJava {
    public static void main(String[] args) throws Exception {
        String mode = args[0], url = args[1], subject = args[2];
        try (Client client = Client.builder(url).name("mixed-java-" + mode).connect()) {
            if (mode.equals("serve")) {
                client.serve(subject, "java-svc", m -> {
                    String trace = m.traceparent() == null ? "" : m.traceparent().split("-")[1];
                    return ("java(" + client.serverInfo().region() + ") sums " + sum(m.text()) + " trace=" + trace)
                            .getBytes(StandardCharsets.UTF_8);
                });
                System.out.println("ready");
                System.out.flush();
                Thread.sleep(Long.MAX_VALUE);
            }
            long deadline = System.currentTimeMillis() + 20000;
            while (true) {
                try {
                    Message reply = client.request(subject, args[3].getBytes(StandardCharsets.UTF_8),
                            Map.of(Tracing.TRACEPARENT, args[4]), Duration.ofSeconds(5));
                    System.out.println(reply.text());
                    return;
                } catch (NoRespondersException e) {
                    if (System.currentTimeMillis() > deadline) {
                        throw e;
                    }
                    Thread.sleep(100);
                }
            }
        }
    }

    private static long sum(String csv) {
        long s = 0;
        for (String x : csv.split(",")) {
            s += Long.parseLong(x.trim());
        }
        return s;
    }
}
