package qupath.ext.segtme.client;

/**
 * The annotation to analyse, in full-resolution image pixels.
 *
 * @param x, y, width, height  integer bounding box (the tile plan's bounds)
 * @param geometryGeoJson      GeoJSON Geometry (or Feature) of the annotation; the server keeps only
 *                             nuclei whose centroid lies inside it; null or "" = the bounding box only
 * @param annotationId         QuPath object id (echoed back in the report), may be ""
 * @param imageMpp             µm per full-resolution pixel (&gt; 0)
 */
public record AnnotationRegion(long x, long y, long width, long height, String geometryGeoJson,
                               String annotationId, double imageMpp) {

    public AnnotationRegion {
        if (width <= 0 || height <= 0)
            throw new IllegalArgumentException("annotation bounds must have a positive size, got " + width + "x" + height);
        if (!(imageMpp > 0) || Double.isInfinite(imageMpp))
            throw new IllegalArgumentException("the image has no valid pixel size (µm per pixel), got " + imageMpp
                    + "; set it in QuPath (Image tab) before running SegTME");
        geometryGeoJson = geometryGeoJson == null ? "" : geometryGeoJson;
        annotationId = annotationId == null ? "" : annotationId;
    }
}
