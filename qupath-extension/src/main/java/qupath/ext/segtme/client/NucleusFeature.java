package qupath.ext.segtme.client;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One nucleus as returned by the server: a GeoJSON Feature in QuPath's format
 * (docs/INTERFACES.md, "QuPath GeoJSON"), coordinates in full-resolution image pixels.
 * The raw feature is kept so the QuPath layer can hand it unchanged to QuPath's own GeoJSON reader.
 */
public final class NucleusFeature {

    private final JsonObject feature;
    private final String id;
    private final String objectType;
    private final String className;
    private final int[] color;
    private final Map<String, Double> measurements;
    private final double centroidX;
    private final double centroidY;
    private final double areaPx;

    private NucleusFeature(JsonObject feature, String id, String objectType, String className, int[] color,
                           Map<String, Double> measurements, double[] centroidArea) {
        this.feature = feature;
        this.id = id;
        this.objectType = objectType;
        this.className = className;
        this.color = color;
        this.measurements = measurements;
        this.centroidX = centroidArea[0];
        this.centroidY = centroidArea[1];
        this.areaPx = centroidArea[2];
    }

    /**
     * Parse one GeoJSON Feature.
     *
     * @throws IllegalArgumentException if it is not a Feature with a Polygon/MultiPolygon geometry
     */
    public static NucleusFeature parse(JsonObject f) {
        if (f == null || !f.has("type") || !"Feature".equals(f.get("type").getAsString()))
            throw new IllegalArgumentException("not a GeoJSON Feature: " + abbreviate(f));
        JsonObject geometry = f.has("geometry") && f.get("geometry").isJsonObject() ? f.getAsJsonObject("geometry") : null;
        if (geometry == null)
            throw new IllegalArgumentException("feature without geometry: " + abbreviate(f));
        JsonObject props = f.has("properties") && f.get("properties").isJsonObject() ? f.getAsJsonObject("properties") : new JsonObject();
        String id = f.has("id") && !f.get("id").isJsonNull() ? f.get("id").getAsString() : null;
        String objectType = props.has("objectType") ? props.get("objectType").getAsString() : "annotation";
        String className = null;
        int[] color = null;
        if (props.has("classification") && props.get("classification").isJsonObject()) {
            JsonObject c = props.getAsJsonObject("classification");
            className = c.has("name") ? c.get("name").getAsString() : null;
            if (c.has("color") && c.get("color").isJsonArray()) {
                JsonArray a = c.getAsJsonArray("color");
                color = new int[a.size()];
                for (int k = 0; k < a.size(); k++)
                    color[k] = a.get(k).getAsInt();
            }
        }
        Map<String, Double> measurements = new LinkedHashMap<>();
        if (props.has("measurements") && props.get("measurements").isJsonObject()) {
            for (Map.Entry<String, JsonElement> e : props.getAsJsonObject("measurements").entrySet()) {
                JsonElement v = e.getValue();
                measurements.put(e.getKey(), v == null || v.isJsonNull() ? Double.NaN : v.getAsDouble());
            }
        }
        return new NucleusFeature(f, id, objectType, className, color, Collections.unmodifiableMap(measurements),
                Geometries.centroidAndArea(geometry));
    }

    private static String abbreviate(JsonElement e) {
        String s = String.valueOf(e);
        return s.length() > 200 ? s.substring(0, 200) + "..." : s;
    }

    /** The raw Feature (do not modify). */
    public JsonObject feature() {
        return feature;
    }

    /** Feature id (a UUID string from the server), or null. */
    public String id() {
        return id;
    }

    /** "detection" or "cell" ("annotation" if the property is missing, as QuPath reads it). */
    public String objectType() {
        return objectType;
    }

    /** QuPath classification name, or null. */
    public String className() {
        return className;
    }

    /** Classification colour [r, g, b] 0-255, or null. */
    public int[] color() {
        return color == null ? null : color.clone();
    }

    /** Measurements as sent (QuPath names, units in the names). */
    public Map<String, Double> measurements() {
        return measurements;
    }

    /** The Feature's geometry (GeoJSON, full-res px). */
    public JsonObject geometry() {
        return feature.getAsJsonObject("geometry");
    }

    /** Area-weighted centroid x of the geometry, full-res px. */
    public double centroidX() {
        return centroidX;
    }

    /** Area-weighted centroid y of the geometry, full-res px. */
    public double centroidY() {
        return centroidY;
    }

    /** Geometry area in full-res px² (holes subtracted). */
    public double areaPx() {
        return areaPx;
    }
}
