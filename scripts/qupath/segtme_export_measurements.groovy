/**
 * SegTME: export the annotation measurement table (TME features, one row per annotation) and,
 * optionally, the per-nucleus detection table, for all images of a project.
 *
 * Step by step
 *  1. Run Detect TME (menu Extensions > SegTME > Detect TME..., or segtme_batch_project.groovy)
 *     and save the images (File > Save, or "Run for project" saves automatically).
 *  2. Automate > Script editor > File > Open... this file.
 *  3. Set OUTPUT_DIR below (default: <project>/segtme_export).
 *  4. Run > Run (NOT "Run for project": this script loops over the project itself).
 *  5. Open <OUTPUT_DIR>/segtme_annotations.tsv in a spreadsheet: one row per annotation with the
 *     "SegTME: ..." columns (units in the names), plus the tokens and the model that produced them.
 *     With EXPORT_NUCLEI = true, segtme_nuclei.tsv has one row per nucleus (class, area, ...).
 *
 * Uses QuPath's own MeasurementExporter (qupath.lib.gui.tools.MeasurementExporter), the same code as
 * Measure > Export measurements.
 */
import qupath.lib.gui.tools.MeasurementExporter
import qupath.lib.objects.PathAnnotationObject
import qupath.lib.objects.PathDetectionObject

def EXPORT_NUCLEI = false
def project = getProject()
if (project == null) {
    println 'Open a project first'
    return
}
def OUTPUT_DIR = buildFilePath(PROJECT_BASE_DIR, 'segtme_export')
mkdirs(OUTPUT_DIR)
def entries = project.getImageList()

new MeasurementExporter()
    .imageList(entries)
    .separator('\t')
    .exportType(PathAnnotationObject.class)
    .exportMeasurements(new File(buildFilePath(OUTPUT_DIR, 'segtme_annotations.tsv')))
println "Annotations: ${buildFilePath(OUTPUT_DIR, 'segtme_annotations.tsv')}"

// Tokens and model are stored as annotation metadata (not numeric measurements): write them alongside.
def meta = new File(buildFilePath(OUTPUT_DIR, 'segtme_tokens.tsv'))
meta.withWriter('UTF-8') { w ->
    w << 'Image\tAnnotation\tObject ID\tSegTME model\tSegTME tokens\n'
    entries.each { entry ->
        def hierarchy = entry.readHierarchy()
        hierarchy.getAnnotationObjects().findAll { it.getMetadata().containsKey('SegTME tokens') }.each { a ->
            w << [entry.getImageName(), a.getDisplayedName(), a.getID(), a.getMetadata()['SegTME model'],
                  a.getMetadata()['SegTME tokens']].join('\t') << '\n'
        }
    }
}
println "Tokens: ${meta}"

if (EXPORT_NUCLEI) {
    new MeasurementExporter()
        .imageList(entries)
        .separator('\t')
        .exportType(PathDetectionObject.class)
        .exportMeasurements(new File(buildFilePath(OUTPUT_DIR, 'segtme_nuclei.tsv')))
    println "Nuclei: ${buildFilePath(OUTPUT_DIR, 'segtme_nuclei.tsv')}"
}
