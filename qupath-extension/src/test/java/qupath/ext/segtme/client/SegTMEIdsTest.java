package qupath.ext.segtme.client;

import org.junit.jupiter.api.Test;

import java.util.HashSet;
import java.util.Random;
import java.util.Set;
import java.util.UUID;

import static org.junit.jupiter.api.Assertions.*;

class SegTMEIdsTest {

    @Test
    void idsSayMadeBySegTMEForWhichAnnotationAndKind() {
        UUID a = UUID.randomUUID(), b = UUID.randomUUID();
        int nonce = SegTMEIds.newRunNonce();
        UUID n = SegTMEIds.objectId(a, SegTMEIds.Kind.NUCLEUS, nonce, 7);
        UUID t = SegTMEIds.objectId(a, SegTMEIds.Kind.TISSUE, nonce, 0);
        assertTrue(SegTMEIds.isSegTME(n));
        assertEquals(SegTMEIds.Kind.NUCLEUS, SegTMEIds.kind(n));
        assertEquals(SegTMEIds.Kind.TISSUE, SegTMEIds.kind(t));
        assertTrue(SegTMEIds.madeFor(n, a));
        assertTrue(SegTMEIds.madeFor(n, a, SegTMEIds.Kind.NUCLEUS));
        assertFalse(SegTMEIds.madeFor(n, a, SegTMEIds.Kind.TISSUE));
        assertFalse(SegTMEIds.madeFor(n, b), "another annotation's objects are not this one's");
        assertEquals(8, n.version(), "RFC 9562 version-8 UUID");
        assertEquals(2, n.variant(), "IETF variant");
        // survives the text round trip QuPath's GeoJSON / .qpdata use
        assertTrue(SegTMEIds.madeFor(UUID.fromString(n.toString()), a, SegTMEIds.Kind.NUCLEUS));
    }

    @Test
    void randomUuidsAreNeverSegTME() {
        for (int k = 0; k < 100_000; k++) {
            UUID r = UUID.randomUUID();
            assertFalse(SegTMEIds.isSegTME(r), r.toString());
        }
        assertFalse(SegTMEIds.isSegTME(null));
        assertNull(SegTMEIds.kind(UUID.randomUUID()));
    }

    @Test
    void idsOfOneRunAndOfSuccessiveRunsAreDistinct() {
        UUID a = UUID.randomUUID();
        Set<UUID> seen = new HashSet<>();
        for (int run = 0; run < 3; run++) {
            int nonce = run; // distinct nonces
            for (long k = 0; k < 10_000; k++)
                assertTrue(seen.add(SegTMEIds.objectId(a, SegTMEIds.Kind.NUCLEUS, nonce, k)));
        }
        assertThrows(IllegalArgumentException.class, () -> SegTMEIds.objectId(a, SegTMEIds.Kind.NUCLEUS, 0, -1));
        assertThrows(IllegalArgumentException.class, () -> SegTMEIds.objectId(a, SegTMEIds.Kind.NUCLEUS, 0, 1L << 32));
    }

    @Test
    void annotationKeysDoNotCollideAmongManyAnnotations() {
        Random rnd = new Random(12);
        Set<Long> keys = new HashSet<>();
        for (int k = 0; k < 20_000; k++)
            assertTrue(keys.add(SegTMEIds.annotationKey(new UUID(rnd.nextLong(), rnd.nextLong()))));
        // UUIDs differing in one bit (sequential ids) still get different keys
        assertNotEquals(SegTMEIds.annotationKey(new UUID(0, 1)), SegTMEIds.annotationKey(new UUID(0, 2)));
        assertNotEquals(SegTMEIds.annotationKey(new UUID(1, 0)), SegTMEIds.annotationKey(new UUID(0, 1)));
    }

    @Test
    void pythonWritesTheSameLayout() {
        // the layout written down in docs/qupath.md ("Object IDs"): fixed bits of version, variant, tags and kind
        UUID a = UUID.fromString("00000000-0000-4000-8000-000000000000");
        UUID id = SegTMEIds.objectId(a, SegTMEIds.Kind.REPORT, 0xABCDE, 5);
        String s = id.toString();
        assertTrue(s.matches("[0-9a-f]{8}-[0-9a-f]{4}-85e6-ad3a-bcde00000005"), s);
    }
}
