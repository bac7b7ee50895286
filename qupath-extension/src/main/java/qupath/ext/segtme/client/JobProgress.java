package qupath.ext.segtme.client;

/**
 * Progress of one job.
 *
 * @param tilesSent     tiles the client has read and sent so far
 * @param tilesDone     tiles the server has finished
 * @param tilesExpected tiles in the plan
 * @param nucleiSoFar   nuclei found so far (server count)
 * @param fraction      0..1; 1 only once the report has arrived
 * @param stage         "connecting", "segmenting", "features", "narrative", "done"
 */
public record JobProgress(int tilesSent, int tilesDone, int tilesExpected, long nucleiSoFar, double fraction, String stage) {}
