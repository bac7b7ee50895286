package qupath.ext.segtme.client;

import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.io.IOException;

/**
 * A {@link TileSource} over an in-memory full-resolution image (small images, tests, scripts).
 * Downsampled regions are resampled with bilinear interpolation to
 * {@code max(1, round(w / downsample)) x max(1, round(h / downsample))} pixels.
 */
public final class BufferedImageTileSource implements TileSource {

    private final BufferedImage image;

    public BufferedImageTileSource(BufferedImage image) {
        this.image = image;
    }

    @Override
    public long width() {
        return image.getWidth();
    }

    @Override
    public long height() {
        return image.getHeight();
    }

    @Override
    public RgbTile read(long x, long y, long w, long h, double downsample) throws IOException {
        if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > image.getWidth() || y + h > image.getHeight())
            throw new IOException("region " + x + "," + y + "," + w + "x" + h + " is outside the "
                    + image.getWidth() + "x" + image.getHeight() + " image");
        BufferedImage region = image.getSubimage((int) x, (int) y, (int) w, (int) h);
        int tw = (int) Math.max(1, Math.round(w / downsample));
        int th = (int) Math.max(1, Math.round(h / downsample));
        if (tw == w && th == h)
            return RgbTile.fromBufferedImage(region);
        BufferedImage scaled = new BufferedImage(tw, th, BufferedImage.TYPE_INT_RGB);
        var g = scaled.createGraphics();
        try {
            g.setRenderingHint(RenderingHints.KEY_INTERPOLATION, RenderingHints.VALUE_INTERPOLATION_BILINEAR);
            g.drawImage(region, 0, 0, tw, th, null);
        } finally {
            g.dispose();
        }
        return RgbTile.fromBufferedImage(scaled);
    }
}
