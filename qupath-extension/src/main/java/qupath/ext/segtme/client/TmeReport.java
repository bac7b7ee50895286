package qupath.ext.segtme.client;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The TME report of one annotation, as plain Java values.
 *
 * @param reportJson   the full report ({"raw_data","interpretation","generated_tokens","narrative","verifier",...}),
 *                     an empty object if the server sent none
 * @param narrative    grounded narrative text ("" if disabled)
 * @param tokens       biological tokens, e.g. "[IMMUNE_HOT]"
 * @param measurements QuPath measurement names (units in the names) to values; undefined values omitted
 * @param nucleiTotal  number of nuclei the server reported for the annotation
 * @param annotationId QuPath object id echoed back
 * @param seconds      server-side wall time of the job
 */
public record TmeReport(JsonObject reportJson, String narrative, List<String> tokens,
                        Map<String, Double> measurements, long nucleiTotal, String annotationId, double seconds) {

    /** Convert the proto message. */
    public static TmeReport fromProto(qupath.ext.segtme.client.proto.TMEReport r) {
        JsonObject json = r.getReportJson().isBlank() ? new JsonObject() : JsonParser.parseString(r.getReportJson()).getAsJsonObject();
        return new TmeReport(json, r.getNarrative(), List.copyOf(r.getTokensList()),
                Collections.unmodifiableMap(new LinkedHashMap<>(r.getMeasurementsMap())),
                r.getNucleiTotal(), r.getAnnotationId(), r.getSeconds());
    }
}
