package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * The READMEs' hello worlds, run as written against a real gateway process: the first java
 * code block of adapters/java/README.md, and the one of the repository README (whose imports
 * are in a comment), put in a class with the gateway's address in place of 127.0.0.1:7422 and
 * started with the single-file source launcher on this test's classpath. The gateway is the
 * `nexus` binary ($NEXUS_BIN, else $CARGO_TARGET_DIR/debug/nexus).
 */
class ReadmeTest {
    @Test
    void adapterReadmeHelloWorld() throws Exception {
        String out = runHelloWorld(Path.of(System.getProperty("nexus.readme", "README.md")), "");
        assertTrue(out.contains("hello"), out);
    }

    @Test
    void repositoryReadmeHelloWorld() throws Exception {
        String out = runHelloWorld(Path.of(System.getProperty("nexus.root.readme", "../../README.md")),
                "import io.nexus.client.*;\nimport java.time.Duration;\n");
        assertEquals("hello", out.strip());
    }

    private static String runHelloWorld(Path readmePath, String imports0) throws Exception {
        String readme = Files.readString(readmePath);
        Matcher block = Pattern.compile("```java\\n(.*?)```", Pattern.DOTALL).matcher(readme);
        assertTrue(block.find(), "README.md has a java code block");
        String bin = System.getenv().getOrDefault("NEXUS_BIN",
                System.getenv().getOrDefault("CARGO_TARGET_DIR", System.getProperty("user.home") + "/.cache/nexus/target") + "/debug/nexus");
        Path dir = Files.createTempDirectory("nexus-readme-");
        Process gateway = new ProcessBuilder(bin, "gateway", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--auth", "off", "--state-dir", dir.resolve("state").toString())
                .redirectError(dir.resolve("gateway.log").toFile()).start();
        try {
            BufferedReader out = new BufferedReader(new InputStreamReader(gateway.getInputStream(), StandardCharsets.UTF_8));
            Matcher m = null;
            for (String line; (line = out.readLine()) != null; ) {
                Matcher banner = Pattern.compile(" listening on (\\S+), metrics on (\\S+)").matcher(line);
                if (banner.find()) {
                    m = banner;
                    break;
                }
            }
            if (m == null) {
                throw new AssertionError(bin + " printed no banner: " + Files.readString(dir.resolve("gateway.log")));
            }
            String grpc = m.group(1);
            waitReady(m.group(2));
            String body = block.group(1).replace("127.0.0.1:7422", grpc);
            Path src = dir.resolve("Hello.java");
            StringBuilder imports = new StringBuilder(imports0);
            StringBuilder code = new StringBuilder();
            for (String line : body.split("\n")) {
                (line.startsWith("import ") ? imports : code).append(line).append('\n');
            }
            Files.writeString(src, imports + "public class Hello { public static void main(String[] args) throws Exception {\n"
                    + code + "}}\n");
            Process hello = new ProcessBuilder(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                    "-cp", System.getProperty("java.class.path"), src.toString())
                    .redirectErrorStream(true).start();
            assertTrue(hello.waitFor(60, TimeUnit.SECONDS), "hello world finished");
            String printed = new String(hello.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertEquals(0, hello.exitValue(), printed);
            return printed;
        } finally {
            gateway.destroyForcibly().waitFor();
            try (var walk = Files.walk(dir)) {
                walk.sorted(java.util.Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
            }
        }
    }

    private static void waitReady(String metrics) throws Exception {
        long deadline = System.currentTimeMillis() + 15000;
        while (System.currentTimeMillis() < deadline) {
            try {
                HttpURLConnection c = (HttpURLConnection) new URL("http://" + metrics + "/readyz").openConnection();
                if (c.getResponseCode() == 200) {
                    return;
                }
            } catch (java.io.IOException e) {
                // not yet
            }
            Thread.sleep(20);
        }
        throw new AssertionError("gateway not ready");
    }
}
