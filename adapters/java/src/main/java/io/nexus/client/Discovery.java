package io.nexus.client;

import java.net.URI;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Hashtable;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import javax.naming.NameNotFoundException;
import javax.naming.NamingException;
import javax.naming.directory.Attribute;
import javax.naming.directory.Attributes;
import javax.naming.directory.InitialDirContext;

/**
 * Gateway addresses: {@code http://host:port}, {@code https://host:port} (TLS) or DNS SRV
 * discovery names
 * {@code nexus+srv://<region>.<zone>[?dns=ip[:port]]}, resolved with the JDK's JNDI DNS
 * provider. Records of {@code _nexus._tcp.<region>.<zone>} are ordered per RFC 2782 (lowest
 * priority first, weighted random within a priority); each target is resolved with an A
 * lookup. The answer is cached for 5 s or until a round in which no gateway accepted. When
 * every gateway of a cached answer failed, the round asks DNS again at once and tries the
 * gateways the fresh answer adds before the client backs off (see Client#connectRound).
 */
final class Discovery {
    static final String SRV_SCHEME = "nexus+srv";
    static final String DNS_SERVER_ENV = "NEXUS_DNS_SERVER";
    private static final long CACHE_MS = 5000;

    /** One gateway to try. */
    record Endpoint(String name, String address) {}

    /** One SRV record. */
    record Srv(int priority, int weight, int port, String target) {}

    /**
     * Orders SRV records per RFC 2782: lowest priority first; within a priority, a weighted
     * random order (weight-0 records come after the weighted ones unless all weights are 0).
     */
    static List<Srv> orderSrv(List<Srv> input, java.util.Random random) {
        List<Srv> records = new ArrayList<>(input);
        records.sort(Comparator.comparingInt(Srv::priority));
        List<Srv> ordered = new ArrayList<>();
        int i = 0;
        while (i < records.size()) {
            int prio = records.get(i).priority();
            List<Srv> group = new ArrayList<>();
            while (i < records.size() && records.get(i).priority() == prio) {
                group.add(records.get(i++));
            }
            while (!group.isEmpty()) {
                int total = group.stream().mapToInt(Srv::weight).sum();
                int pick = random.nextInt(group.size());
                if (total > 0) {
                    double point = random.nextDouble() * total;
                    for (int j = 0; j < group.size(); j++) {
                        if (group.get(j).weight() == 0) {
                            continue;
                        }
                        pick = j;
                        point -= group.get(j).weight();
                        if (point <= 0) {
                            break;
                        }
                    }
                }
                ordered.add(group.remove(pick));
            }
        }
        return ordered;
    }

    final String url;
    final String srvName;
    /** Whether the address is {@code https://} (TLS). */
    final boolean https;
    private final String dnsServer;
    private List<Endpoint> cache = new ArrayList<>();
    private long expires;
    /** Whether the last {@link #endpoints()} asked DNS (rather than using the cached answer). */
    private boolean resolvedNow;

    Discovery(String addr, String dnsServerOverride) {
        url = addr.trim();
        int idx = url.indexOf("://");
        String scheme = idx >= 0 ? url.substring(0, idx) : "http";
        String rest = idx >= 0 ? url.substring(idx + 3) : url;
        https = scheme.equals("https");
        if (scheme.equals(SRV_SCHEME)) {
            URI u = URI.create(url);
            String name = u.getHost();
            if (name == null || !name.contains(".")) {
                throw new InvalidAddressException("invalid gateway address " + addr + ": expected nexus+srv://<region>.<zone>");
            }
            srvName = "_nexus._tcp." + name;
            String q = null;
            if (u.getQuery() != null) {
                for (String kv : u.getQuery().split("&")) {
                    if (kv.startsWith("dns=")) {
                        q = kv.substring(4);
                    }
                }
            }
            String env = System.getenv(DNS_SERVER_ENV);
            dnsServer = dnsServerOverride != null ? dnsServerOverride : q != null ? q : env;
        } else if (scheme.equals("http") || scheme.equals("grpc") || scheme.equals("https")) {
            String hostport = rest.replaceAll("/$", "");
            if (!hostport.matches(".*:\\d+$")) {
                throw new InvalidAddressException("invalid gateway address " + addr + ": missing port");
            }
            srvName = null;
            dnsServer = null;
            cache.add(new Endpoint(hostport, hostport));
        } else {
            throw new InvalidAddressException("invalid gateway address " + addr + ": unknown scheme " + scheme);
        }
    }

    boolean isSrv() {
        return srvName != null;
    }

    synchronized void forget() {
        expires = 0;
    }

    /** Moves a gateway that failed (or was lost) to the end of the order. */
    synchronized void demote(String name) {
        List<Endpoint> head = new ArrayList<>(), tail = new ArrayList<>();
        for (Endpoint e : cache) {
            (e.name().equals(name) ? tail : head).add(e);
        }
        head.addAll(tail);
        cache = head;
    }

    synchronized boolean resolvedNow() {
        return resolvedNow;
    }

    synchronized List<Endpoint> endpoints() {
        resolvedNow = false;
        if (!isSrv() || (!cache.isEmpty() && System.currentTimeMillis() < expires)) {
            return new ArrayList<>(cache);
        }
        resolvedNow = true;
        cache = resolve();
        expires = System.currentTimeMillis() + CACHE_MS;
        return new ArrayList<>(cache);
    }

    private List<Endpoint> resolve() {
        Hashtable<String, String> env = new Hashtable<>();
        env.put("java.naming.factory.initial", "com.sun.jndi.dns.DnsContextFactory");
        env.put("java.naming.provider.url", dnsServer != null ? "dns://" + dnsServer : "dns:");
        env.put("com.sun.jndi.dns.timeout.initial", "1000");
        env.put("com.sun.jndi.dns.timeout.retries", "2");
        String server = dnsServer != null ? dnsServer : "the system resolver";
        List<Srv> records = new ArrayList<>();
        InitialDirContext ctx;
        try {
            ctx = new InitialDirContext(env);
            Attributes attrs = ctx.getAttributes(srvName, new String[] {"SRV"});
            Attribute srv = attrs.get("SRV");
            if (srv == null) {
                throw new DiscoveryException(srvName + " has no SRV records (" + server + ")");
            }
            for (int i = 0; i < srv.size(); i++) {
                String[] f = srv.get(i).toString().trim().split("\\s+");
                records.add(new Srv(Integer.parseInt(f[0]), Integer.parseInt(f[1]), Integer.parseInt(f[2]), f[3]));
            }
        } catch (NameNotFoundException e) {
            throw new DiscoveryException(srvName + " does not exist (NXDOMAIN from " + server + "): unknown region or zone, or no live gateway");
        } catch (NamingException e) {
            throw new DiscoveryException("looking up " + srvName + " at " + server + ": " + e);
        }
        List<Srv> ordered = orderSrv(records, ThreadLocalRandom.current());
        List<Endpoint> out = new ArrayList<>();
        for (Srv r : ordered) {
            String target = r.target().endsWith(".") ? r.target().substring(0, r.target().length() - 1) : r.target();
            try {
                Attribute a = ctx.getAttributes(target, new String[] {"A"}).get("A");
                if (a != null && a.size() > 0) {
                    out.add(new Endpoint(target.split("\\.")[0], a.get(0) + ":" + r.port()));
                }
            } catch (NamingException e) {
                // this target does not resolve; try the others
            }
        }
        if (out.isEmpty()) {
            throw new DiscoveryException(srvName + ": no SRV target resolved to an address");
        }
        return out;
    }
}
