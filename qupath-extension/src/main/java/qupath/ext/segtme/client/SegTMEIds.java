package qupath.ext.segtme.client;

import java.security.SecureRandom;
import java.util.UUID;

/**
 * The re-run marker: every object SegTME adds to QuPath gets an object ID (QuPath's per-object {@link UUID},
 * {@code PathObject.getID()}) that says "made by SegTME, for annotation A, of kind K".
 * <p>
 * Why the ID and not a per-object metadata map or a measurement: a slide has 10^5-10^6 nuclei; every
 * {@code PathObject} already stores its UUID (and .qpdata files, GeoJSON export/import and
 * <i>Resolve hierarchy</i> keep it), so the marker costs no memory at all, while a metadata map per nucleus
 * costs a map plus its strings per object (QuPath itself warns about the memory cost of per-object metadata),
 * and a measurement shows up as a column in every table. The ID also does not depend on where the object sits
 * in the hierarchy, so a re-run finds the previous objects wherever they moved.
 * <p>
 * Layout (an RFC 9562 version-8 "custom" UUID, so it can never equal a random version-4 UUID that QuPath
 * generates for other objects):
 * <pre>
 *  most significant 64 bits:  [48 bits annotation key][4 bits version = 8][12 bits tag 0x5E6]
 *  least significant 64 bits: [2 bits variant = 10][6 bits tag 0x2D][4 bits kind][20 bits run nonce][32 bits index]
 * </pre>
 * The annotation key is the upper 48 bits of (annotation UUID msb XOR lsb), mixed; two different annotations of
 * one image share a key with probability ~ n²/2^49 (10^-10 for 100 annotations). The run nonce (random per run)
 * keeps IDs of successive runs distinct; the index numbers the objects of one run.
 * The same layout is written by the Python CLI for its GeoJSON (see docs/qupath.md, "Object IDs").
 */
public final class SegTMEIds {

    /** What a SegTME object is. */
    public enum Kind {
        /** a nucleus (detection or cell) */
        NUCLEUS(1),
        /** a tissue-region annotation of a PAGET model */
        TISSUE(2),
        /** a report annotation written by the CLI (whole-image "SegTME TME report") */
        REPORT(3);

        final int code;

        Kind(int code) {
            this.code = code;
        }

        static Kind of(int code) {
            for (Kind k : values())
                if (k.code == code)
                    return k;
            return null;
        }
    }

    static final int TAG_MSB = 0x5E6;   // 12 bits
    static final int TAG_LSB = 0x2D;    // 6 bits
    private static final SecureRandom RANDOM = new SecureRandom();

    private SegTMEIds() {}

    /** The 48-bit key of an annotation's UUID (the part that goes into its objects' IDs). */
    public static long annotationKey(UUID annotation) {
        long h = annotation.getMostSignificantBits() ^ Long.rotateLeft(annotation.getLeastSignificantBits(), 29);
        h ^= h >>> 33;                    // murmur3 fmix64: every input bit affects the key
        h *= 0xff51afd7ed558ccdL;
        h ^= h >>> 33;
        h *= 0xc4ceb9fe1a85ec53L;
        h ^= h >>> 33;
        return h >>> 16;
    }

    /** A fresh random run nonce (20 bits). */
    public static int newRunNonce() {
        return RANDOM.nextInt(1 << 20);
    }

    /**
     * The ID of object number {@code index} of one run for {@code annotation}.
     *
     * @param nonce 20-bit run nonce ({@link #newRunNonce()})
     * @param index 0-based object number within the run (&lt; 2^32)
     */
    public static UUID objectId(UUID annotation, Kind kind, int nonce, long index) {
        if (index < 0 || index >= (1L << 32))
            throw new IllegalArgumentException("object index out of range: " + index);
        long msb = (annotationKey(annotation) << 16) | (0x8L << 12) | TAG_MSB;
        long lsb = (0b10L << 62) | ((long) TAG_LSB << 56) | ((long) kind.code << 52)
                | ((long) (nonce & 0xFFFFF) << 32) | index;
        return new UUID(msb, lsb);
    }

    /** True if {@code id} was made by SegTME (any annotation, any kind). */
    public static boolean isSegTME(UUID id) {
        return id != null && (id.getMostSignificantBits() & 0xFFFFL) == ((0x8L << 12) | TAG_MSB)
                && (id.getLeastSignificantBits() >>> 56) == ((0b10L << 6) | TAG_LSB)
                && kind(id) != null;
    }

    /** The kind of a SegTME ID, or null if {@code id} is not one. */
    public static Kind kind(UUID id) {
        if (id == null || (id.getMostSignificantBits() & 0xFFFFL) != ((0x8L << 12) | TAG_MSB))
            return null;
        return Kind.of((int) ((id.getLeastSignificantBits() >>> 52) & 0xF));
    }

    /** True if {@code id} is a SegTME object of kind {@code kind} made for {@code annotation}. */
    public static boolean madeFor(UUID id, UUID annotation, Kind kind) {
        return isSegTME(id) && kind(id) == kind && (id.getMostSignificantBits() >>> 16) == annotationKey(annotation);
    }

    /** True if {@code id} is any SegTME object made for {@code annotation}. */
    public static boolean madeFor(UUID id, UUID annotation) {
        return isSegTME(id) && (id.getMostSignificantBits() >>> 16) == annotationKey(annotation);
    }
}
