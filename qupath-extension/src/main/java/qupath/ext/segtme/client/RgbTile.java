package qupath.ext.segtme.client;

import java.awt.image.BufferedImage;
import java.util.Objects;

/**
 * An 8-bit RGB tile: {@code width * height * 3} bytes, row-major, R G B per pixel
 * (the proto's {@code RAW_RGB} layout).
 */
public record RgbTile(int width, int height, byte[] rgb) {

    public RgbTile {
        Objects.requireNonNull(rgb, "rgb");
        if (width <= 0 || height <= 0)
            throw new IllegalArgumentException("tile size must be positive, got " + width + "x" + height);
        if ((long) width * height * 3 != rgb.length)
            throw new IllegalArgumentException("expected " + ((long) width * height * 3) + " bytes, got " + rgb.length);
    }

    /** Convert any {@link BufferedImage} (RGB, ARGB, gray, indexed...) to packed RGB bytes; alpha is dropped. */
    public static RgbTile fromBufferedImage(BufferedImage img) {
        int w = img.getWidth(), h = img.getHeight();
        int[] argb = img.getRGB(0, 0, w, h, null, 0, w);
        byte[] out = new byte[w * h * 3];
        for (int k = 0, o = 0; k < argb.length; k++) {
            int v = argb[k];
            out[o++] = (byte) (v >> 16);
            out[o++] = (byte) (v >> 8);
            out[o++] = (byte) v;
        }
        return new RgbTile(w, h, out);
    }

    /** The tile as a TYPE_INT_RGB image (used for PNG/JPEG encoding). */
    public BufferedImage toBufferedImage() {
        BufferedImage img = new BufferedImage(width, height, BufferedImage.TYPE_INT_RGB);
        int[] px = new int[width * height];
        for (int k = 0, o = 0; k < px.length; k++, o += 3)
            px[k] = ((rgb[o] & 0xff) << 16) | ((rgb[o + 1] & 0xff) << 8) | (rgb[o + 2] & 0xff);
        img.setRGB(0, 0, width, height, px, 0, width);
        return img;
    }
}
