package qupath.ext.segtme.client;

import java.util.List;

/**
 * Everything one DetectTME job returned, collected completely before it is handed on
 * (the import layer never sees a partial result: a failed or cancelled job throws instead).
 *
 * @param nuclei       all nuclei (full-res px), in the order the server sent them
 * @param tissue       tissue regions (PAGET models only, else empty): one annotation per tissue class, merged over
 *                     the tiles and clipped to the annotation by the server
 * @param report       the TME report (the stream's last message)
 * @param plan         the tile plan that was streamed
 * @param modelName    the model that ran
 * @param progress     every progress update received, in order (the last has fraction 1)
 */
public record DetectionResult(List<NucleusFeature> nuclei, List<TissueFeature> tissue, TmeReport report,
                              TilePlanner.Plan plan, String modelName, List<JobProgress> progress) {

    /** A result without tissue regions (nucleus models). */
    public DetectionResult(List<NucleusFeature> nuclei, TmeReport report, TilePlanner.Plan plan, String modelName,
                           List<JobProgress> progress) {
        this(nuclei, List.of(), report, plan, modelName, progress);
    }
}
