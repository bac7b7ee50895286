package qupath.ext.segtme.client;

import java.io.IOException;

/**
 * Where the client reads pixels from. The QuPath layer implements it with
 * {@code ImageServer.readRegion(RegionRequest)}; tests use {@link BufferedImageTileSource}.
 * Implementations must be safe to call from the client's worker thread.
 */
public interface TileSource {

    /** Full-resolution image width in pixels. */
    long width();

    /** Full-resolution image height in pixels. */
    long height();

    /**
     * Read a region given in full-resolution pixels at a downsample (full-res px per returned px).
     * The returned tile is about {@code round(w / downsample) x round(h / downsample)} pixels;
     * its exact size is sent to the server, which maps tile pixel (u, v) to
     * {@code (x + u * downsample, y + v * downsample)}.
     */
    RgbTile read(long x, long y, long w, long h, double downsample) throws IOException;
}
