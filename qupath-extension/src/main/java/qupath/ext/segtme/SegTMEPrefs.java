package qupath.ext.segtme;

import javafx.beans.property.BooleanProperty;
import javafx.beans.property.DoubleProperty;
import javafx.beans.property.IntegerProperty;
import javafx.beans.property.StringProperty;
import qupath.ext.segtme.client.DetectOptions;
import qupath.ext.segtme.client.RunSettings;
import qupath.ext.segtme.client.TargetRule;
import qupath.fx.prefs.controlsfx.PropertyItemBuilder;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.prefs.PathPrefs;

import java.nio.file.Path;

/**
 * Persistent SegTME preferences (QuPath's user preferences), shown under <i>Edit › Preferences › SegTME</i> and
 * in the Detect TME dialog (both edit the same properties).
 * Relies on PathPrefs.createPersistentPreference(String, String|int|boolean|double) (qupath-gui-fx 0.6),
 * QuPathGUI.getPreferencePane().getPropertySheet().getItems() (as QuPath's OpenSlide extension does) and
 * qupath-fxtras' PropertyItemBuilder(Property, Class).name/category/description/propertyType(FILE).build().
 */
final class SegTMEPrefs {

    private SegTMEPrefs() {}

    static final String CATEGORY = "SegTME";

    /** host:port of `segtme serve`. */
    static final StringProperty SERVER = PathPrefs.createPersistentPreference("segtme.server", RunSettings.DEFAULT_SERVER);
    /** Bearer token; empty = $SEGTME_TOKEN. Stored in plain text in the user preferences: prefer the variable. */
    static final StringProperty TOKEN = PathPrefs.createPersistentPreference("segtme.token", "");
    static final BooleanProperty TLS = PathPrefs.createPersistentPreference("segtme.tls", false);
    /** PEM file of the CA (or self-signed certificate) of the server; empty = the JVM's trusted roots. */
    static final StringProperty CA_FILE = PathPrefs.createPersistentPreference("segtme.caFile", "");
    /** Model name; empty = the server's default. */
    static final StringProperty MODEL = PathPrefs.createPersistentPreference("segtme.model", "");
    /** Tile size in working px; 0 = the model's. */
    static final IntegerProperty TILE_SIZE = PathPrefs.createPersistentPreference("segtme.tileSize", 0);
    /** Overlap in working px; -1 = the model's. */
    static final IntegerProperty OVERLAP = PathPrefs.createPersistentPreference("segtme.overlap", -1);
    /** true = cells (nucleus grown by CELL_EXPANSION µm), false = detections. */
    static final BooleanProperty CELLS = PathPrefs.createPersistentPreference("segtme.cells", false);
    static final DoubleProperty CELL_EXPANSION = PathPrefs.createPersistentPreference("segtme.cellExpansion",
            RunSettings.DEFAULT_CELL_EXPANSION_UM);
    static final BooleanProperty NARRATIVE = PathPrefs.createPersistentPreference("segtme.narrative", true);

    /** The current preferences as run settings (targets: the selection; plane z, t; token pref, else $SEGTME_TOKEN). */
    static RunSettings toSettings(int z, int t) {
        String ca = CA_FILE.get() == null ? "" : CA_FILE.get().strip();
        return new RunSettings(SERVER.get(), RunSettings.resolveToken(TOKEN.get(), System::getenv), TLS.get(),
                ca.isEmpty() ? null : Path.of(ca), MODEL.get(), TILE_SIZE.get(), OVERLAP.get(),
                CELLS.get() ? DetectOptions.Output.CELLS : DetectOptions.Output.DETECTIONS, CELL_EXPANSION.get(),
                NARRATIVE.get(), TargetRule.of(TargetRule.Scope.SELECTED), z, t);
    }

    /** Adds the SegTME section to Edit › Preferences. */
    static void install(QuPathGUI qupath) {
        var items = qupath.getPreferencePane().getPropertySheet().getItems();
        items.add(new PropertyItemBuilder<>(SERVER, String.class).name("Server (host:port)").category(CATEGORY)
                .description("Address of `segtme serve`, e.g. localhost:50051").build());
        items.add(new PropertyItemBuilder<>(TOKEN, String.class).name("Token").category(CATEGORY)
                .description("Bearer token of the server. Empty = the SEGTME_TOKEN environment variable. "
                        + "Stored in plain text in QuPath's preferences: prefer the variable.").build());
        items.add(new PropertyItemBuilder<>(TLS, Boolean.class).name("TLS").category(CATEGORY)
                .description("Connect with TLS (the server was started with --tls-cert/--tls-key)").build());
        items.add(new PropertyItemBuilder<>(CA_FILE, String.class).name("TLS CA file (PEM)").category(CATEGORY)
                .propertyType(PropertyItemBuilder.PropertyType.FILE)
                .description("Certificate (PEM) that signs the server's certificate; a self-signed server's own "
                        + "certificate. Empty = the JVM's trusted roots. Setting it implies TLS.").build());
        items.add(new PropertyItemBuilder<>(MODEL, String.class).name("Model").category(CATEGORY)
                .description("Model name (the Detect TME dialog lists the server's models). Empty = the server's default.").build());
        items.add(new PropertyItemBuilder<>(CELLS, Boolean.class).name("Make cells").category(CATEGORY)
                .description("Cells (nucleus grown by the cell expansion) instead of nucleus detections").build());
        items.add(new PropertyItemBuilder<>(CELL_EXPANSION, Double.class).name("Cell expansion (µm)").category(CATEGORY)
                .description("How far each nucleus is grown to make its cell, in µm (cells stop where they meet)").build());
        items.add(new PropertyItemBuilder<>(TILE_SIZE, Integer.class).name("Tile size (working px)").category(CATEGORY)
                .description("Tile edge in pixels at the model's resolution; 0 = the model's").build());
        items.add(new PropertyItemBuilder<>(OVERLAP, Integer.class).name("Tile overlap (working px)").category(CATEGORY)
                .description("Overlap in pixels at the model's resolution; -1 = the model's").build());
        items.add(new PropertyItemBuilder<>(NARRATIVE, Boolean.class).name("Narrative").category(CATEGORY)
                .description("Write a grounded narrative into the annotation's description").build());
    }
}
