package qupath.ext.segtme.client;

import java.util.List;

/**
 * Everything one DetectTME job returned, collected completely before it is handed on
 * (the import layer never sees a partial result: a failed or cancelled job throws instead).
 *
 * @param nuclei       all nuclei (full-res px), in the order the server sent them
 * @param report       the TME report (the stream's last message)
 * @param plan         the tile plan that was streamed
 * @param modelName    the model that ran
 * @param progress     every progress update received, in order (the last has fraction 1)
 */
public record DetectionResult(List<NucleusFeature> nuclei, TmeReport report, TilePlanner.Plan plan,
                              String modelName, List<JobProgress> progress) {}
