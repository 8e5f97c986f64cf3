package io.nexus.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import nexus.v1.GatewayOuterClass.Frame;
import nexus.v1.GatewayOuterClass.Msg;
import nexus.v1.GatewayOuterClass.Pub;
import nexus.v1.GatewayOuterClass.Reply;
import org.junit.jupiter.api.Test;

/** Payload compression (docs/protocol.md section 9.2): codecs, bounds, frames. */
class CompressionTest {
    private static byte[] json(int n) {
        StringBuilder s = new StringBuilder("[");
        for (int i = 0; s.length() < n; i++) {
            s.append("{\"id\":").append(i).append(",\"site\":\"fra-").append(i % 5).append("\",\"ok\":true},");
        }
        return Arrays.copyOf(s.toString().getBytes(StandardCharsets.UTF_8), n);
    }

    @Test
    void bothCodecsAreThereRoundTripAndRefuseBombs() throws Exception {
        assertEquals(List.of("zstd", "lz4"), Compression.available());
        byte[] data = json(8192);
        for (String codec : List.of("zstd", "lz4")) {
            byte[] packed = Compression.compress(codec, data);
            assertTrue(packed.length * 3 < data.length, codec + ": " + packed.length);
            assertArrayEquals(data, Compression.decompress(codec, packed, data.length));
            byte[] bomb = Compression.compress(codec, new byte[16 << 20]);
            var e = assertThrows(Compression.CompressionException.class, () -> Compression.decompress(codec, bomb, 1 << 20));
            assertTrue(e.getMessage().contains("exceeds max_payload (1048576 bytes)"), e.getMessage());
            byte[] cut = Arrays.copyOf(packed, packed.length / 2);
            assertThrows(Compression.CompressionException.class, () -> Compression.decompress(codec, cut, 1 << 20));
        }
        assertThrows(Compression.CompressionException.class, () -> Compression.decompress("brotli", data, 1 << 20));
    }

    @Test
    void framesAreEncodedWhenWorthItAndDecodedBack() throws Exception {
        byte[] data = json(4096);
        Frame f = Frame.newBuilder().setPub(Pub.newBuilder().setSubject("a").setPayload(ByteString.copyFrom(data))).build();
        assertSame(f, Compression.encode(f, "zstd", List.of("lz4"), 1024), "not accepted by the gateway");
        assertSame(f, Compression.encode(f, "zstd", List.of("zstd"), 8192), "below the threshold");
        Frame packed = Compression.encode(f, "zstd", List.of("zstd", "lz4"), 1024);
        assertEquals("zstd", packed.getPub().getHeaders(0).getValue());
        Frame msg = Frame.newBuilder().setMsg(Msg.newBuilder().setSubject("a").setPayload(packed.getPub().getPayload())
                .addAllHeaders(packed.getPub().getHeadersList())).build();
        Frame plain = Compression.decode(msg, 1 << 20);
        assertArrayEquals(data, plain.getMsg().getPayload().toByteArray());
        assertEquals(0, plain.getMsg().getHeadersCount());
        // A corrupt reply becomes a service error rather than garbage.
        Frame reply = Frame.newBuilder().setReply(Reply.newBuilder().setReqId(7).setPayload(ByteString.copyFromUtf8("junk"))
                .addAllHeaders(packed.getPub().getHeadersList())).build();
        Reply r = Compression.decode(reply, 1 << 20).getReply();
        assertTrue(r.hasError() && r.getError().getMessage().contains("cannot be decoded"), r.toString());
    }
}
