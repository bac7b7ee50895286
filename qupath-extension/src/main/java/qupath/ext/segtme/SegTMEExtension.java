package qupath.ext.segtme;

import javafx.scene.control.MenuItem;
import qupath.lib.common.Version;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.extensions.QuPathExtension;

/**
 * Adds Extensions &gt; SegTME &gt; "Detect TME…" and "Test server connection", and the SegTME section of
 * Edit › Preferences ({@link SegTMEPrefs#install}).
 * Relies on QuPathExtension (installExtension/getName/getDescription/getQuPathVersion, qupath-gui-fx
 * qupath/lib/gui/extensions/QuPathExtension.java) and QuPathGUI.getMenu(String, boolean), as used by
 * QuPath's own extensions (e.g. qupath-extension-wsinfer, WSInferExtension.addMenuItems).
 * Registered in META-INF/services/qupath.lib.gui.extensions.QuPathExtension.
 */
public class SegTMEExtension implements QuPathExtension {

    private boolean installed;

    @Override
    public void installExtension(QuPathGUI qupath) {
        if (installed)
            return;
        installed = true;
        SegTMEPrefs.install(qupath);
        var menu = qupath.getMenu("Extensions>SegTME", true);
        var detect = new MenuItem("Detect TME…");
        detect.setOnAction(e -> new DetectTMECommand(qupath).run());
        var test = new MenuItem("Test server connection");
        test.setOnAction(e -> DetectTMECommand.testConnection());
        menu.getItems().addAll(detect, test);
    }

    @Override
    public String getName() {
        return "SegTME";
    }

    @Override
    public String getDescription() {
        return "Nuclei, tumour-microenvironment features and a grounded narrative for annotations, from a SegTME server (gRPC).";
    }

    @Override
    public Version getQuPathVersion() {
        return Version.parse("0.6.0");
    }
}
