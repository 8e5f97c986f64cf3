import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * A TCP relay on a free loopback port in front of a gateway, for the cases that lose a
 * gateway's answers. It forwards both ways until told to {@link #hold}: from then on, what the
 * gateway sends on the connections open at that moment is swallowed (an answer lost in the
 * network) while the client's bytes still reach the gateway; {@link #cut} then breaks those
 * connections. New connections pass, unless {@link #blocked} (then they are closed at once, as
 * by a gateway that is not there).
 */
final class Relay implements AutoCloseable {
    private static final class Conn {
        final Socket client;
        final Socket gateway;
        volatile boolean held;

        Conn(Socket client, Socket gateway) {
            this.client = client;
            this.gateway = gateway;
        }

        void close() {
            for (Socket s : List.of(client, gateway)) {
                try {
                    s.setSoLinger(true, 0); // reset, as a broken network would
                    s.close();
                } catch (IOException e) {
                    // already closed
                }
            }
        }
    }

    private final String upstream;
    private final ServerSocket server;
    private final List<Conn> conns = new CopyOnWriteArrayList<>();
    volatile boolean blocked;

    Relay(String upstream) throws IOException {
        this.upstream = upstream;
        this.server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        Thread t = new Thread(this::accept, "relay-accept");
        t.setDaemon(true);
        t.start();
    }

    String url() {
        return "http://127.0.0.1:" + server.getLocalPort();
    }

    private void accept() {
        while (!server.isClosed()) {
            try {
                Socket client = server.accept();
                if (blocked) {
                    client.setSoLinger(true, 0);
                    client.close();
                    continue;
                }
                int colon = upstream.lastIndexOf(':');
                Socket gateway = new Socket();
                try {
                    gateway.connect(new InetSocketAddress(upstream.substring(0, colon), Integer.parseInt(upstream.substring(colon + 1))), 2000);
                } catch (IOException e) {
                    client.close(); // the gateway is down
                    continue;
                }
                client.setTcpNoDelay(true);
                gateway.setTcpNoDelay(true);
                Conn c = new Conn(client, gateway);
                conns.add(c);
                pump(c, client.getInputStream(), gateway.getOutputStream(), false);
                pump(c, gateway.getInputStream(), client.getOutputStream(), true);
            } catch (IOException e) {
                // the relay is closing
            }
        }
    }

    private void pump(Conn c, InputStream in, OutputStream out, boolean downstream) {
        Thread t = new Thread(() -> {
            byte[] buf = new byte[65536];
            try {
                int n;
                while ((n = in.read(buf)) > 0) {
                    if (downstream && c.held) {
                        continue;
                    }
                    out.write(buf, 0, n);
                    out.flush();
                }
            } catch (IOException e) {
                // one side went away
            } finally {
                c.close();
                conns.remove(c);
            }
        }, "relay-pump");
        t.setDaemon(true);
        t.start();
    }

    void hold() {
        for (Conn c : conns) {
            c.held = true;
        }
    }

    void cut() {
        for (Conn c : conns) {
            if (c.held) {
                c.close();
            }
        }
    }

    @Override
    public void close() {
        try {
            server.close();
        } catch (IOException e) {
            // already closed
        }
        for (Conn c : conns) {
            c.close();
        }
    }
}
