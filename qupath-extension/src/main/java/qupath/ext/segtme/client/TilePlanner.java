package qupath.ext.segtme.client;

import java.util.ArrayList;
import java.util.List;

/**
 * The streaming tile plan: one written rule (docs/INTERFACES.md, "The streaming tile plan"),
 * implemented here and in Python {@code segtme.inference.tiling.plan_stream_tiles}; both are
 * checked against {@code tests/data/tile_plan_examples.json}.
 * <p>
 * Units: bounds, cores and regions are full-resolution image pixels (integers); tile size and
 * overlap are working pixels (pixels at the model's MPP); the downsample {@code d} is full-resolution
 * pixels per working pixel ({@code model_mpp / image_mpp}, may be &lt; 1).
 */
public final class TilePlanner {

    private TilePlanner() {}

    /**
     * One tile of the plan.
     *
     * @param i column index, j row index (row-major order: j outer, i inner)
     * @param coreX0 core (half-open) in full-res px: [coreX0, coreX1) x [coreY0, coreY1)
     * @param x region to read, full-res px, already clipped to the image
     * @param downsample full-res px per working px; the region is read at this downsample
     */
    public record PlannedTile(int index, int i, int j,
                              long coreX0, long coreY0, long coreX1, long coreY1,
                              long x, long y, long width, long height, double downsample) {

        /** Half-open core test for a point in full-res px. */
        public boolean owns(double px, double py) {
            return coreX0 <= px && px < coreX1 && coreY0 <= py && py < coreY1;
        }
    }

    /** Derived numbers of a plan (for logging and for the shared examples). */
    public record Plan(double downsample, double coreStep, int nx, int ny, List<PlannedTile> tiles) {

        /** Index of the tile whose core holds (px, py) (full-res px), or -1 if outside the bounds. */
        public int ownerIndex(double px, double py) {
            for (PlannedTile t : tiles) {
                if (t.owns(px, py))
                    return t.index();
            }
            return -1;
        }
    }

    /**
     * Plan the tiles for one annotation.
     *
     * @param bx annotation bounds x (full-res px), bw &gt; 0
     * @param by annotation bounds y
     * @param bw annotation bounds width
     * @param bh annotation bounds height
     * @param imageWidth full-res image width W
     * @param imageHeight full-res image height H
     * @param imageMpp µm per full-res pixel (&gt; 0)
     * @param modelMpp µm per working pixel of the model (&gt; 0)
     * @param tile T, working px (&gt; 0)
     * @param overlap O, working px (0 &lt;= O &lt; T)
     */
    public static Plan plan(long bx, long by, long bw, long bh, long imageWidth, long imageHeight,
                            double imageMpp, double modelMpp, int tile, int overlap) {
        if (!(imageMpp > 0) || Double.isInfinite(imageMpp))
            throw new IllegalArgumentException("image MPP must be a finite positive number, got " + imageMpp);
        if (!(modelMpp > 0) || Double.isInfinite(modelMpp))
            throw new IllegalArgumentException("model MPP must be a finite positive number, got " + modelMpp);
        if (tile <= 0 || overlap < 0 || overlap >= tile)
            throw new IllegalArgumentException("need tile > 0 and 0 <= overlap < tile, got tile=" + tile + ", overlap=" + overlap);
        if (bw <= 0 || bh <= 0 || imageWidth <= 0 || imageHeight <= 0)
            throw new IllegalArgumentException("bounds and image size must be positive");
        // 0. bounds are clipped to the image (annotations may extend past its edges)
        long x1 = Math.min(bx + bw, imageWidth), y1 = Math.min(by + bh, imageHeight);
        bx = Math.max(bx, 0);
        by = Math.max(by, 0);
        bw = x1 - bx;
        bh = y1 - by;
        if (bw <= 0 || bh <= 0)
            throw new IllegalArgumentException("bounds do not overlap the image");
        // 1. downsample; 2. core step and counts
        double d = modelMpp / imageMpp;
        double c = (tile - overlap) * d;
        int nx = (int) Math.max(1, Math.ceil(bw / c));
        int ny = (int) Math.max(1, Math.ceil(bh / c));
        // 4. margin and full-res tile size (round half up)
        long m = (long) Math.floor((overlap / 2.0) * d);
        long tf = (long) Math.floor(tile * d + 0.5);
        List<PlannedTile> tiles = new ArrayList<>(nx * ny);
        for (int j = 0; j < ny; j++) {
            long cy0 = by + (long) Math.floor(j * c);
            long cy1 = j == ny - 1 ? by + bh : by + (long) Math.floor((j + 1) * c);
            long ry = Math.max(0, cy0 - m);
            long rh = Math.min(cy0 - m + tf, imageHeight) - ry;
            for (int i = 0; i < nx; i++) {
                long cx0 = bx + (long) Math.floor(i * c);
                long cx1 = i == nx - 1 ? bx + bw : bx + (long) Math.floor((i + 1) * c);
                long rx = Math.max(0, cx0 - m);
                long rw = Math.min(cx0 - m + tf, imageWidth) - rx;
                tiles.add(new PlannedTile(tiles.size(), i, j, cx0, cy0, cx1, cy1, rx, ry, rw, rh, d));
            }
        }
        return new Plan(d, c, nx, ny, List.copyOf(tiles));
    }
}
