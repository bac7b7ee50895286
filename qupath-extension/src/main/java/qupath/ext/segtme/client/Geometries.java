package qupath.ext.segtme.client;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;

/** Small pure helpers for GeoJSON polygons (coordinates in full-resolution pixels). No JTS needed. */
public final class Geometries {

    private Geometries() {}

    /**
     * Centroid (x, y) and area of a GeoJSON Polygon or MultiPolygon (shoelace formula; holes subtract).
     *
     * @return {cx, cy, area}
     * @throws IllegalArgumentException for other geometry types or a zero-area geometry
     */
    public static double[] centroidAndArea(JsonObject geometry) {
        String type = geometry.get("type").getAsString();
        double a = 0, sx = 0, sy = 0;
        if ("Polygon".equals(type)) {
            double[] r = polygonMoments(geometry.getAsJsonArray("coordinates"));
            a = r[0]; sx = r[1]; sy = r[2];
        } else if ("MultiPolygon".equals(type)) {
            for (var poly : geometry.getAsJsonArray("coordinates")) {
                double[] r = polygonMoments(poly.getAsJsonArray());
                a += r[0]; sx += r[1]; sy += r[2];
            }
        } else {
            throw new IllegalArgumentException("expected a Polygon or MultiPolygon, got " + type);
        }
        if (a == 0)
            throw new IllegalArgumentException("geometry has zero area");
        return new double[] {sx / a, sy / a, a};
    }

    /** {area, area*cx, area*cy} of one polygon (exterior ring minus holes), orientation-independent. */
    private static double[] polygonMoments(JsonArray rings) {
        double a = 0, sx = 0, sy = 0;
        for (int r = 0; r < rings.size(); r++) {
            double[] m = ringMoments(rings.get(r).getAsJsonArray());
            double sign = (r == 0) ? Math.signum(m[0]) : -Math.signum(m[0]);
            a += sign * m[0]; sx += sign * m[1]; sy += sign * m[2];
        }
        if (a < 0) { a = -a; sx = -sx; sy = -sy; }
        return new double[] {a, sx, sy};
    }

    /** Signed {area, area*cx, area*cy} of a closed or open ring. */
    private static double[] ringMoments(JsonArray ring) {
        int n = ring.size();
        double a2 = 0, cx6 = 0, cy6 = 0;
        for (int k = 0; k < n; k++) {
            JsonArray p = ring.get(k).getAsJsonArray();
            JsonArray q = ring.get((k + 1) % n).getAsJsonArray();
            double x0 = p.get(0).getAsDouble(), y0 = p.get(1).getAsDouble();
            double x1 = q.get(0).getAsDouble(), y1 = q.get(1).getAsDouble();
            double cross = x0 * y1 - x1 * y0;
            a2 += cross;
            cx6 += (x0 + x1) * cross;
            cy6 += (y0 + y1) * cross;
        }
        double area = a2 / 2.0;
        return new double[] {area, cx6 / 6.0, cy6 / 6.0};
    }

    /** A GeoJSON Polygon for the rectangle [x, x+w) x [y, y+h) (full-res px), closed ring. */
    public static JsonObject rectangle(double x, double y, double w, double h) {
        JsonArray ring = new JsonArray();
        double[][] pts = {{x, y}, {x + w, y}, {x + w, y + h}, {x, y + h}, {x, y}};
        for (double[] p : pts) {
            JsonArray c = new JsonArray();
            c.add(p[0]);
            c.add(p[1]);
            ring.add(c);
        }
        JsonArray rings = new JsonArray();
        rings.add(ring);
        JsonObject g = new JsonObject();
        g.addProperty("type", "Polygon");
        g.add("coordinates", rings);
        return g;
    }
}
