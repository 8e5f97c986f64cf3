package io.nexus.client;

import com.google.protobuf.ByteString;
import java.util.ArrayList;
import java.util.List;
import nexus.v1.GatewayOuterClass.Error;
import nexus.v1.GatewayOuterClass.ErrorCode;
import nexus.v1.GatewayOuterClass.Frame;
import nexus.v1.GatewayOuterClass.Header;

/**
 * Payload compression on the session (docs/protocol.md section 9.2), invisible to applications.
 *
 * <p>The client lists in its Hello the codecs whose library is on the classpath (zstd-jni for
 * {@code zstd}, lz4-java for {@code lz4}); the gateway lists the codecs it accepts in its Welcome.
 * Outgoing {@code Pub}, {@code Req}, {@code Reply} and {@code StreamData} payloads of at least the
 * threshold are compressed by the writer when the gateway accepts the codec and the result is
 * smaller, and marked with the {@code nexus-encoding} header. Received compressed payloads are
 * decompressed, bounded by the gateway's {@code max_payload}, and the header removed. Without
 * either library the client lists nothing and the gateway sends it plain payloads.
 */
final class Compression {
    static final String HEADER = "nexus-encoding";
    static final int DEFAULT_THRESHOLD = 1024;
    private static final long FALLBACK_MAX = 64L << 20;
    private static final boolean ZSTD = present("com.github.luben.zstd.Zstd");
    private static final boolean LZ4 = present("net.jpountz.lz4.LZ4Factory");

    private Compression() {}

    private static boolean present(String cls) {
        try {
            Class.forName(cls);
            return true;
        } catch (ClassNotFoundException | LinkageError e) {
            return false;
        }
    }

    /** A compressed payload could not be decoded. */
    static final class CompressionException extends ProtocolException {
        CompressionException(String message) {
            super(message);
        }
    }

    /** The codecs this installation can compress and decompress, best first. */
    static List<String> available() {
        List<String> out = new ArrayList<>();
        if (ZSTD) {
            out.add("zstd");
        }
        if (LZ4) {
            out.add("lz4");
        }
        return out;
    }

    static byte[] compress(String codec, byte[] data) {
        if (codec.equals("zstd") && ZSTD) {
            return Zstd.compress(data);
        }
        if (codec.equals("lz4") && LZ4) {
            return Lz4.compress(data);
        }
        throw new IllegalArgumentException("codec " + codec + " is not available");
    }

    /** Decompresses, refusing anything that declares more than {@code max} bytes before allocating. */
    static byte[] decompress(String codec, byte[] data, long max) throws CompressionException {
        long size;
        if (codec.equals("zstd") && ZSTD) {
            size = Zstd.declared(data);
        } else if (codec.equals("lz4") && LZ4) {
            if (data.length < 4) {
                throw new CompressionException("lz4 payload is corrupt: shorter than its 4-byte size prefix");
            }
            size = (data[0] & 0xffL) | (data[1] & 0xffL) << 8 | (data[2] & 0xffL) << 16 | (data[3] & 0xffL) << 24;
        } else {
            throw new CompressionException("payload encoding \"" + codec + "\" (header nexus-encoding) is not supported here");
        }
        if (size > max) {
            throw new CompressionException(codec + " payload declares " + size
                    + " decompressed bytes, which exceeds max_payload (" + max + " bytes)");
        }
        try {
            byte[] out = codec.equals("zstd") ? Zstd.decompress(data, (int) size) : Lz4.decompress(data, (int) size);
            if (out.length != size) {
                throw new CompressionException(codec + " payload is corrupt: decompressed to " + out.length + " bytes, not " + size);
            }
            return out;
        } catch (CompressionException e) {
            throw e;
        } catch (RuntimeException e) {
            throw new CompressionException(codec + " payload is corrupt: " + e.getMessage());
        }
    }

    private static String encodingOf(List<Header> headers) {
        for (Header h : headers) {
            if (h.getKey().equalsIgnoreCase(HEADER)) {
                return h.getValue();
            }
        }
        return null;
    }

    private static List<Header> without(List<Header> headers) {
        List<Header> out = new ArrayList<>(headers.size());
        for (Header h : headers) {
            if (!h.getKey().equalsIgnoreCase(HEADER)) {
                out.add(h);
            }
        }
        return out;
    }

    /** The frame with its payload compressed, or the frame itself when not worth it. */
    static Frame encode(Frame f, String codec, List<String> accepted, int threshold) {
        if (codec == null || !accepted.contains(codec) || !available().contains(codec)) {
            return f;
        }
        Header mark = Header.newBuilder().setKey(HEADER).setValue(codec).build();
        int min = Math.max(threshold, 1);
        switch (f.getKindCase()) {
            case PUB -> {
                var p = f.getPub();
                byte[] packed = worth(codec, p.getPayload(), p.getHeadersList(), min);
                return packed == null ? f
                        : f.toBuilder().setPub(p.toBuilder().setPayload(ByteString.copyFrom(packed)).addHeaders(mark)).build();
            }
            case REQ -> {
                var r = f.getReq();
                byte[] packed = worth(codec, r.getPayload(), r.getHeadersList(), min);
                return packed == null ? f
                        : f.toBuilder().setReq(r.toBuilder().setPayload(ByteString.copyFrom(packed)).addHeaders(mark)).build();
            }
            case REPLY -> {
                var r = f.getReply();
                byte[] packed = r.hasError() ? null : worth(codec, r.getPayload(), r.getHeadersList(), min);
                return packed == null ? f
                        : f.toBuilder().setReply(r.toBuilder().setPayload(ByteString.copyFrom(packed)).addHeaders(mark)).build();
            }
            case STREAM_DATA -> {
                var d = f.getStreamData();
                byte[] packed = worth(codec, d.getPayload(), d.getHeadersList(), min);
                return packed == null ? f
                        : f.toBuilder().setStreamData(d.toBuilder().setPayload(ByteString.copyFrom(packed)).addHeaders(mark)).build();
            }
            default -> {
                return f;
            }
        }
    }

    private static byte[] worth(String codec, ByteString payload, List<Header> headers, int min) {
        if (payload.size() < min || encodingOf(headers) != null) {
            return null;
        }
        byte[] packed = compress(codec, payload.toByteArray());
        return packed.length < payload.size() ? packed : null;
    }

    /**
     * The received frame with its payload decompressed and the header removed (the frame itself
     * when plain). Throws when it cannot be decoded.
     */
    static Frame decode(Frame f, long maxPayload) throws CompressionException {
        long max = maxPayload > 0 ? maxPayload : FALLBACK_MAX;
        switch (f.getKindCase()) {
            case MSG -> {
                var m = f.getMsg();
                String codec = encodingOf(m.getHeadersList());
                if (codec == null) {
                    return f;
                }
                byte[] plain = decompress(codec.toLowerCase(java.util.Locale.ROOT), m.getPayload().toByteArray(), max);
                return f.toBuilder().setMsg(m.toBuilder().setPayload(ByteString.copyFrom(plain))
                        .clearHeaders().addAllHeaders(without(m.getHeadersList()))).build();
            }
            case REPLY -> {
                var r = f.getReply();
                String codec = r.hasError() ? null : encodingOf(r.getHeadersList());
                if (codec == null) {
                    return f;
                }
                try {
                    byte[] plain = decompress(codec.toLowerCase(java.util.Locale.ROOT), r.getPayload().toByteArray(), max);
                    return f.toBuilder().setReply(r.toBuilder().setPayload(ByteString.copyFrom(plain))
                            .clearHeaders().addAllHeaders(without(r.getHeadersList()))).build();
                } catch (CompressionException e) {
                    return f.toBuilder().setReply(r.toBuilder().setPayload(ByteString.EMPTY).setError(Error.newBuilder()
                            .setCode(ErrorCode.SERVICE_ERROR)
                            .setMessage("the reply's compressed payload cannot be decoded: " + e.getMessage())
                            .setRefId(r.getReqId()))).build();
                }
            }
            case STREAM_DATA -> {
                var d = f.getStreamData();
                String codec = encodingOf(d.getHeadersList());
                if (codec == null) {
                    return f;
                }
                byte[] plain = decompress(codec.toLowerCase(java.util.Locale.ROOT), d.getPayload().toByteArray(), max);
                return f.toBuilder().setStreamData(d.toBuilder().setPayload(ByteString.copyFrom(plain))
                        .clearHeaders().addAllHeaders(without(d.getHeadersList()))).build();
            }
            default -> {
                return f;
            }
        }
    }

    /** zstd through zstd-jni, in its own class so that it loads only when the library is there. */
    private static final class Zstd {
        static byte[] compress(byte[] data) {
            return com.github.luben.zstd.Zstd.compress(data, 3);
        }

        static long declared(byte[] data) throws CompressionException {
            if (data.length < 5 || (data[0] & 0xff) != 0x28 || (data[1] & 0xff) != 0xb5 || (data[2] & 0xff) != 0x2f
                    || (data[3] & 0xff) != 0xfd) {
                throw new CompressionException("zstd payload is corrupt: not a zstd frame");
            }
            long size = com.github.luben.zstd.Zstd.decompressedSize(data);
            if (size <= 0 && data.length > 0) {
                // 0 means unknown for zstd-jni; a real empty payload is never compressed.
                throw new CompressionException("zstd payload is corrupt: the frame does not declare its decompressed size");
            }
            return size;
        }

        static byte[] decompress(byte[] data, int size) {
            return com.github.luben.zstd.Zstd.decompress(data, size);
        }
    }

    /** lz4 through lz4-java: a 4-byte little-endian size, then one block. */
    private static final class Lz4 {
        static byte[] compress(byte[] data) {
            var c = net.jpountz.lz4.LZ4Factory.fastestInstance().fastCompressor();
            byte[] out = new byte[4 + c.maxCompressedLength(data.length)];
            int n = c.compress(data, 0, data.length, out, 4);
            out[0] = (byte) data.length;
            out[1] = (byte) (data.length >>> 8);
            out[2] = (byte) (data.length >>> 16);
            out[3] = (byte) (data.length >>> 24);
            return java.util.Arrays.copyOf(out, 4 + n);
        }

        static byte[] decompress(byte[] data, int size) {
            byte[] out = new byte[size];
            // The safe decompressor checks every bound and never writes past `size`.
            int n = net.jpountz.lz4.LZ4Factory.fastestInstance().safeDecompressor().decompress(data, 4, data.length - 4, out, 0, size);
            return n == size ? out : java.util.Arrays.copyOf(out, n);
        }
    }
}
