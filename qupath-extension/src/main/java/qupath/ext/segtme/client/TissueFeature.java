package qupath.ext.segtme.client;

import com.google.gson.JsonObject;

import java.util.Map;

/**
 * One tissue region as returned by the server for PAGET models (paget_s / paget_h): a GeoJSON Feature with
 * {@code objectType "annotation"} whose classification is a PAGET tissue class (Epithelium, Stroma, Smooth muscle,
 * Red blood cell) with its colour, a (Multi)Polygon geometry in full-resolution image pixels, already merged over
 * the job's tiles and clipped to the annotation, and the measurements {@code "Area px^2"} / {@code "Area µm^2"}.
 * Kept separate from the nuclei; the raw feature is kept so the QuPath layer can hand it unchanged to QuPath's own
 * GeoJSON reader.
 */
public final class TissueFeature {

    private final NucleusFeature parsed;

    private TissueFeature(NucleusFeature parsed) {
        this.parsed = parsed;
    }

    /**
     * Parse one GeoJSON Feature.
     *
     * @throws IllegalArgumentException if it is not an annotation Feature with a Polygon/MultiPolygon geometry
     *                                  and a classification name
     */
    public static TissueFeature parse(JsonObject f) {
        NucleusFeature p = NucleusFeature.parse(f); // generic Feature parsing: id, class, colour, measurements, area
        if (!"annotation".equals(p.objectType()))
            throw new IllegalArgumentException("not an annotation feature (objectType " + p.objectType() + ")");
        if (p.className() == null || p.className().isBlank())
            throw new IllegalArgumentException("tissue annotation without a classification name");
        return new TissueFeature(p);
    }

    /** True if a parsed server feature is a tissue annotation rather than a nucleus. */
    static boolean isAnnotation(JsonObject f) {
        JsonObject props = f.has("properties") && f.get("properties").isJsonObject() ? f.getAsJsonObject("properties") : null;
        return props != null && props.has("objectType") && "annotation".equals(props.get("objectType").getAsString());
    }

    /** The raw Feature (do not modify). */
    public JsonObject feature() {
        return parsed.feature();
    }

    /** Feature id (a UUID string from the server), or null. */
    public String id() {
        return parsed.id();
    }

    /** PAGET tissue class name, e.g. "Epithelium". */
    public String className() {
        return parsed.className();
    }

    /** Classification colour [r, g, b] 0-255, or null. */
    public int[] color() {
        return parsed.color();
    }

    /** The Feature's "name" property (e.g. "PAGET Epithelium"), or null. */
    public String name() {
        JsonObject props = feature().has("properties") ? feature().getAsJsonObject("properties") : null;
        return props != null && props.has("name") && !props.get("name").isJsonNull() ? props.get("name").getAsString() : null;
    }

    /** Measurements as sent ("Area px^2", "Area µm^2"). */
    public Map<String, Double> measurements() {
        return parsed.measurements();
    }

    /** The geometry (GeoJSON Polygon or MultiPolygon, full-res px). */
    public JsonObject geometry() {
        return parsed.geometry();
    }

    /** Geometry area in full-res px² (holes subtracted). */
    public double areaPx() {
        return parsed.areaPx();
    }
}
