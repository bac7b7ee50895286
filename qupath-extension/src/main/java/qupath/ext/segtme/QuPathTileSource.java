package qupath.ext.segtme;

import qupath.ext.segtme.client.RgbTile;
import qupath.ext.segtme.client.TileSource;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.regions.RegionRequest;

import java.awt.image.BufferedImage;
import java.io.IOException;

/**
 * Reads tiles through QuPath's ImageServer (any format QuPath opens, pyramids used automatically) from one
 * image plane (z-slice, timepoint: the plane the viewer shows when run from the GUI).
 * Relies on: ImageServer.getWidth()/getHeight()/getPath()/readRegion(RegionRequest) and
 * RegionRequest.createInstance(String path, double downsample, int x, int y, int w, int h, int z, int t)
 * (qupath-core 0.6, qupath/lib/regions/RegionRequest.java).
 */
final class QuPathTileSource implements TileSource {

    private final ImageServer<BufferedImage> server;
    private final int z;
    private final int t;

    QuPathTileSource(ImageServer<BufferedImage> server, int z, int t) {
        this.server = server;
        this.z = z;
        this.t = t;
    }

    @Override
    public long width() {
        return server.getWidth();
    }

    @Override
    public long height() {
        return server.getHeight();
    }

    @Override
    public RgbTile read(long x, long y, long w, long h, double downsample) throws IOException {
        var request = RegionRequest.createInstance(server.getPath(), downsample, (int) x, (int) y, (int) w, (int) h, z, t);
        BufferedImage img = server.readRegion(request);
        if (img == null)
            throw new IOException("QuPath returned no pixels for " + request);
        return RgbTile.fromBufferedImage(img);
    }
}
