package qupath.ext.segtme;

import javafx.beans.property.BooleanProperty;
import javafx.beans.property.IntegerProperty;
import javafx.beans.property.StringProperty;
import qupath.lib.gui.prefs.PathPrefs;

/**
 * Persistent SegTME preferences (saved in QuPath's user preferences).
 * Relies on PathPrefs.createPersistentPreference(String, String|int|boolean) (qupath-gui-fx,
 * qupath/lib/gui/prefs/PathPrefs.java, 0.6: returns String/Integer/BooleanProperty backed by the user prefs).
 */
final class SegTMEPrefs {

    private SegTMEPrefs() {}

    /** host:port of `segtme serve`. */
    static final StringProperty SERVER = PathPrefs.createPersistentPreference("segtme.server", "localhost:50051");
    /** Optional bearer token (stored in the user preferences in plain text; leave empty if the server has none). */
    static final StringProperty TOKEN = PathPrefs.createPersistentPreference("segtme.token", "");
    static final BooleanProperty TLS = PathPrefs.createPersistentPreference("segtme.tls", false);
    /** Model name; empty = the server's default. */
    static final StringProperty MODEL = PathPrefs.createPersistentPreference("segtme.model", "");
    /** Tile size in working px; 0 = the model's. */
    static final IntegerProperty TILE_SIZE = PathPrefs.createPersistentPreference("segtme.tileSize", 0);
    /** Overlap in working px; -1 = the model's. */
    static final IntegerProperty OVERLAP = PathPrefs.createPersistentPreference("segtme.overlap", -1);
    /** true = cells (nucleus geometry), false = detections. */
    static final BooleanProperty CELLS = PathPrefs.createPersistentPreference("segtme.cells", false);
    static final BooleanProperty NARRATIVE = PathPrefs.createPersistentPreference("segtme.narrative", true);

    /** The current preferences as options for {@link SegTME#detectTME}. */
    static SegTME.Options toOptions() {
        return new SegTME.Options(SERVER.get(), TOKEN.get(), TLS.get(), MODEL.get(), TILE_SIZE.get(), OVERLAP.get(),
                CELLS.get(), NARRATIVE.get());
    }
}
