package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * TLS against a real {@code nexus gateway} serving its own TLS listener, with certificates from
 * {@code nexus certs}: the cluster CA works, another CA and a wrong name are refused, a missing
 * CA file is named, and a gateway requiring client certificates accepts one from the CA.
 *
 * <p>gRPC over TLS needs ALPN ("h2"); with Debian's Netty 4.1.48 the adapter negotiates it through
 * Netty's Java9SslEngine ({@link Tls}), so nothing here is skipped.
 */
class TlsTest {
    private static final String BIN = System.getenv().getOrDefault("NEXUS_BIN",
            System.getenv().getOrDefault("CARGO_TARGET_DIR", System.getProperty("user.home") + "/.cache/nexus/target") + "/debug/nexus");

    private static void run(String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(BIN));
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0, out);
    }

    /** Starts a TLS gateway; returns it and its adapter address. */
    private static Object[] gateway(Path dir, boolean clientCa) throws Exception {
        Path pki = dir.resolve("pki");
        List<String> cmd = new ArrayList<>(List.of(BIN, "gateway", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--auth", "off", "--state-dir", dir.resolve("state").toString(),
                "--tls-cert", pki.resolve("gateways/local/gw-1.pem").toString(),
                "--tls-key", pki.resolve("gateways/local/gw-1-key.pem").toString()));
        if (clientCa) {
            cmd.addAll(List.of("--tls-client-ca", pki.resolve("ca.pem").toString()));
        }
        Process gw = new ProcessBuilder(cmd).redirectError(dir.resolve("gateway.log").toFile()).start();
        BufferedReader out = new BufferedReader(new InputStreamReader(gw.getInputStream(), StandardCharsets.UTF_8));
        for (String line; (line = out.readLine()) != null; ) {
            Matcher m = Pattern.compile(" listening on (\\S+), metrics on (\\S+)").matcher(line);
            if (m.find()) {
                long deadline = System.currentTimeMillis() + 15_000;
                while (true) {
                    try {
                        HttpURLConnection c = (HttpURLConnection) new URL("http://" + m.group(2) + "/readyz").openConnection();
                        if (c.getResponseCode() == 200) {
                            return new Object[] {gw, m.group(1)};
                        }
                    } catch (java.io.IOException e) {
                        // not yet
                    }
                    assertTrue(System.currentTimeMillis() < deadline, "gateway not ready");
                    Thread.sleep(20);
                }
            }
        }
        gw.destroyForcibly();
        throw new AssertionError("no banner: " + Files.readString(dir.resolve("gateway.log")));
    }

    /** Kills the gateway and removes the test's directory (certificates, state, log). */
    private static void stop(Process gw, Path dir) throws Exception {
        gw.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
        try (java.util.stream.Stream<Path> all = Files.walk(dir)) {
            for (Path p : all.sorted(java.util.Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }

    private static Path pki() throws Exception {
        Path dir = Files.createTempDirectory("nexus-java-tls-");
        run("certs", "--out", dir.resolve("pki").toString(), "--gateway", "local/gw-1@127.0.0.1,gateway.test", "--admin", "svc");
        run("certs", "--out", dir.resolve("other").toString());
        return dir;
    }

    @Test
    void httpsWithTheClusterCaAndRefusals() throws Exception {
        Path dir = pki();
        Object[] g = gateway(dir, false);
        Process gw = (Process) g[0];
        String addr = (String) g[1];
        String ca = dir.resolve("pki/ca.pem").toString();
        try {
            NexusException missing = assertThrows(NexusException.class, () -> Client.builder("https://" + addr)
                    .tlsCaFile(dir.resolve("missing.pem").toString()).connectTimeout(Duration.ofSeconds(3)).connect());
            assertTrue(missing.getMessage().contains("missing.pem"), missing.getMessage());
            try (Client c = Client.builder("https://" + addr).tlsCaFile(ca).connectTimeout(Duration.ofSeconds(5)).connect()) {
                Subscription sub = c.subscribe("tls.java");
                c.publishAcked("tls.java", "over TLS".getBytes(StandardCharsets.UTF_8), java.util.Map.of());
                Message m = sub.next(Duration.ofSeconds(5));
                assertEquals("over TLS", new String(m.payload(), StandardCharsets.UTF_8));
            }
            try (Client c = Client.builder("https://" + addr).tlsCaFile(ca).tlsServerName("gateway.test")
                    .connectTimeout(Duration.ofSeconds(5)).connect()) {
                assertTrue(c != null);
            }
            NexusException wrongCa = assertThrows(ConnectFailedException.class, () -> Client.builder("https://" + addr)
                    .tlsCaFile(dir.resolve("other/ca.pem").toString()).connectTimeout(Duration.ofSeconds(3)).connect());
            assertTrue(wrongCa.getMessage().contains("PKIX path"), wrongCa.getMessage());
            NexusException wrongName = assertThrows(ConnectFailedException.class, () -> Client.builder("https://" + addr).tlsCaFile(ca)
                    .tlsServerName("elsewhere.test").connectTimeout(Duration.ofSeconds(3)).connect());
            assertTrue(wrongName.getMessage().contains("elsewhere.test"), wrongName.getMessage());
            // The JDK's trust store alone does not know the cluster CA.
            NexusException noCa = assertThrows(ConnectFailedException.class, () -> Client.builder("https://" + addr)
                    .connectTimeout(Duration.ofSeconds(3)).connect());
            assertTrue(noCa.getMessage().contains("PKIX path"), noCa.getMessage());
        } finally {
            stop(gw, dir);
        }
    }

    @Test
    void aRequiredClientCertificate() throws Exception {
        Path dir = pki();
        Object[] g = gateway(dir, true);
        Process gw = (Process) g[0];
        String addr = (String) g[1];
        String ca = dir.resolve("pki/ca.pem").toString();
        try {
            String cert = dir.resolve("pki/admin/svc.pem").toString();
            String key = dir.resolve("pki/admin/svc-key.pem").toString();
            assertThrows(NexusException.class, () -> {
                try (Client c = Client.builder("https://" + addr).tlsCaFile(ca).connectTimeout(Duration.ofSeconds(3)).connect()) {
                    c.publishAcked("tls.mtls", new byte[0], java.util.Map.of());
                }
            });
            try (Client c = Client.builder("https://" + addr).tlsCaFile(ca)
                    .tlsClientCertFiles(cert, key)
                    .connectTimeout(Duration.ofSeconds(5)).connect()) {
                c.publishAcked("tls.mtls", new byte[0], java.util.Map.of());
            }
        } finally {
            stop(gw, dir);
        }
    }
}
