import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * Real Nexus processes for the Java conformance runner: a gateway (and, for the auth cases, a
 * control plane with DNS discovery) on free loopback ports, a second region federated over
 * QUIC with routes applied through nexusctl, a TCP relay that can lose a gateway's answers
 * ({@link Relay}), readiness by polling /readyz, and cleanup that kills every process started.
 */
final class Harness {
    private Harness() {}

    /** The validity of the gateway certificate in a {@code gateway.tls: "expired"} environment. */
    static final String EXPIRED_NOT_BEFORE = "2020-01-01T00:00:00Z";
    static final String EXPIRED_NOT_AFTER = "2020-01-02T00:00:00Z";

    static String nexusBin() {
        String b = System.getenv("NEXUS_BIN");
        if (b != null && !b.isEmpty()) {
            return b;
        }
        String cache = System.getenv().getOrDefault("NEXUS_CACHE", System.getProperty("user.home") + "/.cache/nexus");
        return System.getenv().getOrDefault("CARGO_TARGET_DIR", cache + "/target") + "/debug/nexus";
    }

    static String nexusctlBin() {
        String b = System.getenv("NEXUSCTL_BIN");
        return b != null && !b.isEmpty() ? b : new File(nexusBin()).getParent() + "/nexusctl";
    }

    /** A started process and the stdout lines read until it was ready. */
    record Started(Process proc, List<String> lines) {}

    static Started spawnUntil(List<String> args, String marker, File log) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(nexusBin());
        cmd.addAll(args);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.appendTo(log));
        for (String k : List.of("NEXUS_CONTROL_PLANE", "NEXUS_AUTH", "NEXUS_CONFIG", "OTEL_EXPORTER_OTLP_ENDPOINT")) {
            pb.environment().remove(k);
        }
        pb.environment().put("RUST_LOG", "warn");
        Process p = pb.start();
        BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
        List<String> lines = new ArrayList<>();
        String line;
        while ((line = r.readLine()) != null) {
            lines.add(line);
            if (line.contains(marker)) {
                Thread drain = new Thread(() -> {
                    try {
                        while (r.readLine() != null) {
                            // keep the pipe from filling up
                        }
                    } catch (IOException e) {
                        // process gone
                    }
                });
                drain.setDaemon(true);
                drain.start();
                return new Started(p, lines);
            }
        }
        p.destroyForcibly();
        throw new IOException("process exited before printing '" + marker + "': " + lines);
    }

    static void waitReady(String metrics) throws Exception {
        long deadline = System.currentTimeMillis() + 15000;
        while (System.currentTimeMillis() < deadline) {
            try {
                HttpURLConnection c = (HttpURLConnection) new URL("http://" + metrics + "/readyz").openConnection();
                c.setConnectTimeout(1000);
                c.setReadTimeout(1000);
                if (c.getResponseCode() == 200) {
                    return;
                }
            } catch (IOException e) {
                // not yet
            }
            Thread.sleep(20);
        }
        throw new IllegalStateException("gateway with metrics on " + metrics + " did not become ready");
    }

    static String httpGet(String addr, String path) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL("http://" + addr + path).openConnection();
        c.setConnectTimeout(2000);
        c.setReadTimeout(5000);
        try (var in = c.getInputStream()) {
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
    }

    static JsonObject getJson(String addr, String path) throws IOException {
        return JsonParser.parseString(httpGet(addr, path)).getAsJsonObject();
    }

    /** Polls {@code cond} every 20 ms until it holds; throws {@code what} after {@code ms}. */
    static void waitFor(Callable<Boolean> cond, long ms, String what) throws Exception {
        long deadline = System.currentTimeMillis() + ms;
        while (true) {
            try {
                if (cond.call()) {
                    return;
                }
            } catch (IOException | RuntimeException e) {
                // not there yet
            }
            if (System.currentTimeMillis() > deadline) {
                throw new IllegalStateException(what);
            }
            Thread.sleep(20);
        }
    }

    /** Runs a command to completion; fails with its error output. */
    static void run(List<String> cmd, Map<String, String> env) throws Exception {
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.environment().putAll(env);
        pb.redirectErrorStream(true);
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (p.waitFor() != 0) {
            throw new IllegalStateException(String.join(" ", cmd) + " failed: " + out);
        }
    }

    static void kill(Process p) {
        if (p != null) {
            p.destroyForcibly();
            try {
                p.waitFor();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /** One `nexus gateway` process; restart comes back on the same addresses. */
    static final class Gateway {
        private final List<String> args;
        private final File log;
        Process proc;
        String grpc;
        String metrics;
        String federation;

        Gateway(List<String> args, File log) {
            this.args = new ArrayList<>(args);
            this.log = log;
        }

        void start() throws Exception {
            List<String> a = new ArrayList<>(args);
            if (grpc != null) {
                a.set(a.indexOf("--listen") + 1, grpc);
                a.set(a.indexOf("--metrics-listen") + 1, metrics);
                if (federation != null) {
                    a.set(a.indexOf("--federation-listen") + 1, federation);
                }
            }
            long deadline = System.currentTimeMillis() + 10000;
            while (true) {
                try {
                    List<String> cmd = new ArrayList<>(List.of("gateway"));
                    cmd.addAll(a);
                    Started s = spawnUntil(cmd, " listening on ", log);
                    proc = s.proc();
                    for (String l : s.lines()) {
                        Matcher f = Pattern.compile("nexus federation.* on (\\S+)").matcher(l);
                        if (f.find()) {
                            federation = f.group(1);
                        }
                    }
                    Matcher m = Pattern.compile(" listening on (\\S+), metrics on (\\S+)").matcher(s.lines().get(s.lines().size() - 1));
                    if (!m.find()) {
                        throw new IOException("unexpected gateway banner");
                    }
                    grpc = m.group(1);
                    metrics = m.group(2);
                    break;
                } catch (IOException e) {
                    if (System.currentTimeMillis() > deadline) {
                        throw e; // the old port may take a moment to free up
                    }
                    Thread.sleep(100);
                }
            }
            waitReady(metrics);
        }

        /** Serves adapters over TLS ({@code https://}). */
        boolean tls;

        String url() {
            return (tls ? "https://" : "http://") + grpc;
        }

        void restart() throws Exception {
            kill(proc);
            start();
        }

        /** Sends SIGTERM: the gateway drains (docs/protocol.md section 3.4) and exits. */
        void terminate() {
            if (proc != null) {
                proc.destroy();
            }
        }

        /** The exit status once the process has exited within {@code millis}, else null. */
        Integer waitExited(long millis) throws InterruptedException {
            if (proc == null || !proc.waitFor(millis, java.util.concurrent.TimeUnit.MILLISECONDS)) {
                return null;
            }
            return proc.exitValue();
        }
    }

    /** What a case runs against. */
    static final class Environment {
        final JsonObject spec;
        final Path dir;
        final Map<String, String> keys = new HashMap<>();
        final String region = "conformance";
        final String zone = "nexus.local";
        final List<Gateway> gateways = new ArrayList<>();
        Gateway gateway;
        /** The gateway of the second region ({@code remote_region}), federated with the first. */
        Gateway remote;
        Relay relay;
        Process controlPlane;
        String dns;
        /**
         * With {@code gateway.tls}: the directories of the cluster PKI ({@code nexus certs}) and of
         * another CA's, by the names {@code connect} uses ({@code cluster}, {@code other}).
         */
        final Map<String, Path> pki = new HashMap<>();
        /** Whether the gateways serve adapters over TLS ({@code https://}). */
        boolean tls;

        Environment(JsonObject spec) throws IOException {
            this.spec = spec;
            this.dir = Files.createTempDirectory("nexus-conformance-");
            keys.put("bad", "nxk_3f9a1c2b4d5e6f70_0123456789abcdef0123456789abcdef");
        }

        void start() throws Exception {
            JsonObject gw = spec.has("gateway") ? spec.getAsJsonObject("gateway") : new JsonObject();
            List<String> args = new ArrayList<>(List.of("--region", region, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                    "--auth", gw.has("auth") ? gw.get("auth").getAsString() : "off"));
            if (gw.has("shutdown_grace_ms")) {
                args.addAll(List.of("--shutdown-grace-ms", gw.get("shutdown_grace_ms").getAsString()));
            }
            if (gw.has("max_payload")) {
                args.addAll(List.of("--max-payload", gw.get("max_payload").getAsString()));
            }
            if (gw.has("tls")) {
                // The gateway's certificate (for 127.0.0.1) and a client certificate from the
                // cluster CA, and a client certificate from another CA, all by `nexus certs`.
                String mode = gw.get("tls").getAsString();
                tls = true;
                for (String which : List.of("cluster", "other")) {
                    pki.put(which, dir.resolve("pki-" + which));
                    run(List.of(nexusBin(), "certs", "--out", pki.get(which).toString(), "--gateway", region + "/conformance-tls@127.0.0.1",
                            "--client", "conformance"), Map.of());
                }
                if (mode.equals("expired")) {
                    // The same gateway certificate re-issued by the cluster CA, valid only on a day
                    // in the past: nothing else is wrong with it.
                    run(List.of(nexusBin(), "certs", "--out", pki.get("cluster").toString(), "--gateway", region + "/conformance-tls@127.0.0.1",
                            "--not-before", EXPIRED_NOT_BEFORE, "--not-after", EXPIRED_NOT_AFTER), Map.of());
                }
                Path cert = pki.get("cluster").resolve("gateways").resolve(region);
                args.addAll(List.of("--tls-cert", cert.resolve("conformance-tls.pem").toString(),
                        "--tls-key", cert.resolve("conformance-tls-key.pem").toString()));
                if (mode.equals("mutual")) {
                    args.addAll(List.of("--tls-client-ca", pki.get("cluster").resolve("ca.pem").toString()));
                }
            }
            if (spec.has("control_plane") && spec.get("control_plane").getAsBoolean()) {
                Path keyFile = dir.resolve("admin.key");
                Started s = spawnUntil(List.of("control-plane", "--listen", "127.0.0.1:0", "--data-dir", dir.resolve("data").toString(),
                        "--dns-listen", "127.0.0.1:0", "--admin-key-file", keyFile.toString(), "--lease-ttl", "3s", "--dns-ttl", "1s"),
                        " listening on ", dir.resolve("control-plane.log").toFile());
                controlPlane = s.proc();
                String cpAddr = null;
                for (String l : s.lines()) {
                    Matcher d = Pattern.compile(" DNS on (\\S+)").matcher(l);
                    if (d.find()) {
                        dns = d.group(1);
                    }
                    Matcher a = Pattern.compile(" listening on (\\S+)").matcher(l);
                    if (a.find()) {
                        cpAddr = a.group(1);
                    }
                }
                String adminKey = Files.readString(keyFile).trim();
                if (spec.has("keys")) {
                    for (var e : spec.getAsJsonObject("keys").entrySet()) {
                        JsonObject scopes = e.getValue().getAsJsonObject();
                        ProcessBuilder pb = new ProcessBuilder(nexusctlBin(), "keys", "create", e.getKey(), "--publish",
                                scopes.get("publish").getAsString(), "--subscribe", scopes.get("subscribe").getAsString(), "-o", "json");
                        pb.environment().put("NEXUS_CONTROL_PLANE", "http://" + cpAddr);
                        pb.environment().put("NEXUS_ADMIN_KEY", adminKey);
                        pb.redirectError(ProcessBuilder.Redirect.INHERIT);
                        Process p = pb.start();
                        String outText = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
                        if (p.waitFor() != 0) {
                            throw new IllegalStateException("nexusctl keys create failed");
                        }
                        keys.put(e.getKey(), JsonParser.parseString(outText).getAsJsonObject().get("secret").getAsString());
                    }
                }
                args.addAll(List.of("--control-plane", "http://" + cpAddr));
                if (spec.has("routes")) {
                    for (var r : spec.getAsJsonArray("routes")) {
                        JsonObject route = r.getAsJsonObject();
                        Path file = dir.resolve("route-" + route.get("name").getAsString() + ".toml");
                        Files.writeString(file, "name = " + route.get("name") + "\nsubjects = " + route.get("subjects")
                                + "\npolicy = " + (route.has("policy") ? route.get("policy") : "\"broadcast\"")
                                + "\nconsistency = " + (route.has("consistency") ? route.get("consistency") : "\"best_effort\"") + "\n");
                        run(List.of(nexusctlBin(), "routes", "apply", "-f", file.toString()),
                                Map.of("NEXUS_CONTROL_PLANE", "http://" + cpAddr, "NEXUS_ADMIN_KEY", adminKey));
                    }
                }
            }
            String remoteRegion = spec.has("remote_region") ? spec.get("remote_region").getAsString() : null;
            if (remoteRegion != null) {
                // The first gateway's region sorts first, so it dials the remote one.
                Path certs = dir.resolve("certs");
                run(List.of(nexusBin(), "federation-certs", "--out", certs.toString(), "--regions", region + "," + remoteRegion), Map.of());
                java.util.function.Function<String, List<String>> fed = r -> List.of("--federation-listen", "127.0.0.1:0",
                        "--federation-cert", certs.resolve(r + ".pem").toString(), "--federation-key", certs.resolve(r + "-key.pem").toString(),
                        "--federation-ca", certs.resolve("ca.pem").toString());
                List<String> ra = new ArrayList<>(args);
                ra.set(ra.indexOf("--region") + 1, remoteRegion);
                ra.addAll(fed.apply(remoteRegion));
                ra.addAll(List.of("--gateway-id", "conformance-remote", "--state-dir", dir.resolve("remote-state").toString()));
                remote = new Gateway(ra, dir.resolve("remote.log").toFile());
                remote.start();
                args.addAll(fed.apply(region));
                args.addAll(List.of("--peer", remoteRegion + "=" + remote.federation));
            }
            int n = spec.has("gateways") ? spec.get("gateways").getAsInt() : 1;
            boolean cluster = spec.has("cluster") && spec.get("cluster").getAsBoolean();
            Path clusterCerts = dir.resolve("cluster-certs");
            if (cluster) {
                // A regional cluster: a certificate per gateway (`nexus certs`), linked over QUIC.
                List<String> cmd = new ArrayList<>(List.of(nexusBin(), "certs", "--out", clusterCerts.toString()));
                for (int i = 0; i < n; i++) {
                    cmd.addAll(List.of("--gateway", region + "/conformance-gw-" + i));
                }
                run(cmd, Map.of());
            }
            for (int i = 0; i < n; i++) {
                // Every gateway gets its own id and state directory (config snapshot, spool).
                List<String> a = new ArrayList<>(args);
                if (cluster) {
                    Path pem = clusterCerts.resolve("gateways").resolve(region);
                    a.addAll(List.of("--federation-listen", "127.0.0.1:0",
                            "--federation-cert", pem.resolve("conformance-gw-" + i + ".pem").toString(),
                            "--federation-key", pem.resolve("conformance-gw-" + i + "-key.pem").toString(),
                            "--federation-ca", clusterCerts.resolve("ca.pem").toString()));
                }
                a.addAll(List.of("--gateway-id", "conformance-gw-" + i, "--state-dir", dir.resolve("gw-state-" + i).toString()));
                Gateway g = new Gateway(a, dir.resolve("gateway-" + i + ".log").toFile());
                g.tls = tls;
                g.start();
                gateways.add(g);
            }
            gateway = gateways.get(0);
            if (cluster) {
                for (Gateway g : gateways) {
                    waitFor(() -> {
                        JsonObject st = getJson(g.metrics, "/v1/status");
                        return st.has("cluster") && st.get("cluster").isJsonArray()
                                && st.getAsJsonArray("cluster").size() == gateways.size() - 1;
                    }, 20000, "gateway " + g.grpc + " did not link to the rest of its cluster");
                }
            }
            if (remoteRegion != null) {
                waitFor(() -> {
                    for (var l : getJson(gateway.metrics, "/v1/status").getAsJsonArray("links")) {
                        JsonObject o = l.getAsJsonObject();
                        if (o.get("region").getAsString().equals(remoteRegion) && o.get("state").getAsString().equals("up")) {
                            return true;
                        }
                    }
                    return false;
                }, 20000, "the federation link to " + remoteRegion + " did not come up");
            }
            if (spec.has("routes")) {
                for (var r : spec.getAsJsonArray("routes")) {
                    JsonObject route = r.getAsJsonObject();
                    List<Gateway> all = new ArrayList<>(gateways);
                    if (remote != null) {
                        all.add(remote);
                    }
                    for (Gateway g : all) {
                        waitFor(() -> {
                            JsonObject fed = getJson(g.metrics, "/v1/explain?subject=" + route.get("probe").getAsString()).getAsJsonObject("federation");
                            return fed != null && fed.has("route") && fed.get("route").isJsonObject()
                                    && route.get("name").getAsString().equals(fed.getAsJsonObject("route").get("name").getAsString());
                        }, 10000, "route " + route.get("name").getAsString() + " did not reach gateway " + g.grpc);
                    }
                }
            }
            if (spec.has("relay") && spec.get("relay").getAsBoolean()) {
                relay = new Relay(gateway.grpc);
            }
        }

        /** The CA file, client certificate and client key of the PKI {@code which} ({@code cluster}, {@code other}). */
        String[] tlsFiles(String which) {
            Path d = pki.get(which);
            if (d == null) {
                throw new IllegalArgumentException("no PKI named " + which + " (the environment has gateway.tls: " + tls + ")");
            }
            return new String[] {d.resolve("ca.pem").toString(), d.resolve("clients").resolve("conformance.pem").toString(),
                    d.resolve("clients").resolve("conformance-key.pem").toString()};
        }

        /** Waits until the first gateway knows that the remote region has interest in {@code subject}. */
        void awaitInterest(String subject) throws Exception {
            String remoteRegion = spec.get("remote_region").getAsString();
            waitFor(() -> {
                JsonObject fed = getJson(gateway.metrics, "/v1/explain?subject=" + subject).getAsJsonObject("federation");
                if (fed == null || !fed.has("regions")) {
                    return false;
                }
                for (var r : fed.getAsJsonArray("regions")) {
                    JsonObject o = r.getAsJsonObject();
                    if (o.get("region").getAsString().equals(remoteRegion) && o.has("interest") && o.get("interest").getAsBoolean()) {
                        return true;
                    }
                }
                return false;
            }, 10000, remoteRegion + "'s interest in " + subject + " did not reach the first gateway");
        }

        /** Waits until the first gateway routes {@code subject} by route {@code name} and its link to the remote region is up. */
        void awaitRoute(String name, String subject) throws Exception {
            String remoteRegion = spec.get("remote_region").getAsString();
            waitFor(() -> {
                JsonObject fed = getJson(gateway.metrics, "/v1/explain?subject=" + subject).getAsJsonObject("federation");
                boolean routed = fed != null && fed.has("route") && fed.get("route").isJsonObject()
                        && name.equals(fed.getAsJsonObject("route").get("name").getAsString());
                boolean up = false;
                for (var l : getJson(gateway.metrics, "/v1/status").getAsJsonArray("links")) {
                    JsonObject o = l.getAsJsonObject();
                    up |= o.get("region").getAsString().equals(remoteRegion) && o.get("state").getAsString().equals("up");
                }
                return routed && up;
            }, 20000, "the first gateway does not route " + subject + " by " + name + " with its link up");
        }

        /** Waits until the first gateway's link to the remote region is up and nothing it spooled for it is unconfirmed. */
        void awaitReplicated() throws Exception {
            String remoteRegion = spec.get("remote_region").getAsString();
            waitFor(() -> {
                JsonObject st = getJson(gateway.metrics, "/v1/status");
                boolean up = false;
                for (var l : st.getAsJsonArray("links")) {
                    JsonObject o = l.getAsJsonObject();
                    up |= o.get("region").getAsString().equals(remoteRegion) && o.get("state").getAsString().equals("up");
                }
                long depth = 0;
                if (st.has("routes")) {
                    for (var r : st.getAsJsonArray("routes")) {
                        JsonObject o = r.getAsJsonObject();
                        if (o.get("region").getAsString().equals(remoteRegion) && o.has("spool_depth")) {
                            depth += o.get("spool_depth").getAsLong();
                        }
                    }
                }
                return up && depth == 0;
            }, 20000, "the first gateway did not finish replicating to " + remoteRegion);
        }

        /** A series of the first gateway's /metrics whose labels include all of {@code labels} (0 when absent). */
        double metric(String name, String... labels) throws IOException {
            for (String line : httpGet(gateway.metrics, "/metrics").split("\n")) {
                int i = line.lastIndexOf(' ');
                if (i < 0) {
                    continue;
                }
                String series = line.substring(0, i);
                if (series.split("\\{")[0].equals(name) && java.util.Arrays.stream(labels).allMatch(series::contains)) {
                    return Double.parseDouble(line.substring(i + 1));
                }
            }
            return 0;
        }

        /** The gateway started with {@code --gateway-id id}. */
        Gateway gatewayById(String id) {
            for (int i = 0; i < gateways.size(); i++) {
                if (("conformance-gw-" + i).equals(id)) {
                    return gateways.get(i);
                }
            }
            throw new IllegalStateException("no gateway " + id + " in this environment");
        }

        /** Kills the gateway started with {@code --gateway-id id}. */
        void killGateway(String id) {
            kill(gatewayById(id).proc);
        }

        String srvUrl(String regionOverride) {
            return "nexus+srv://" + (regionOverride != null ? regionOverride : region) + "." + zone + "?dns=" + (dns != null ? dns : "127.0.0.1:1");
        }

        void stop() {
            if (relay != null) {
                relay.close();
            }
            for (Gateway g : gateways) {
                kill(g.proc);
            }
            if (remote != null) {
                kill(remote.proc);
            }
            kill(controlPlane);
            try (Stream<Path> walk = Files.walk(dir)) {
                walk.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
            } catch (IOException e) {
                // best effort
            }
        }
    }
}
