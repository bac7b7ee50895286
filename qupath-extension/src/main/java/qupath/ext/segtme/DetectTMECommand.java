package qupath.ext.segtme;

import javafx.application.Platform;
import javafx.concurrent.Task;
import javafx.geometry.Insets;
import javafx.scene.Scene;
import javafx.scene.control.Button;
import javafx.scene.control.CheckBox;
import javafx.scene.control.ChoiceBox;
import javafx.scene.control.ComboBox;
import javafx.scene.control.Label;
import javafx.scene.control.PasswordField;
import javafx.scene.control.ProgressBar;
import javafx.scene.control.Spinner;
import javafx.scene.control.TextField;
import javafx.scene.layout.GridPane;
import javafx.scene.layout.HBox;
import javafx.scene.layout.VBox;
import javafx.stage.FileChooser;
import javafx.stage.Modality;
import javafx.stage.Stage;
import qupath.ext.segtme.client.CancelSignal;
import qupath.ext.segtme.client.RunSettings;
import qupath.ext.segtme.client.SegTMEClient;
import qupath.ext.segtme.client.TargetRule;
import qupath.fx.dialogs.Dialogs;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.objects.PathObject;

import java.io.File;
import java.util.List;
import java.util.concurrent.CancellationException;

/**
 * Extensions &gt; SegTME &gt; Detect TME…: options dialog (the same persistent properties as Edit › Preferences ›
 * SegTME), then a background task with a progress window whose Cancel button cancels the gRPC stream. Runs on the
 * selected area annotations (nesting rule: {@code TargetSelector}), tiles from the plane the viewer shows.
 * QuPath API relied on: QuPathGUI.getImageData()/getViewer() (QuPathViewer.getZPosition()/getTPosition()), the
 * hierarchy's getSelectionModel().getSelectedObjects(); qupath-fxtras Dialogs.showConfirmDialog(String, Node) /
 * showErrorMessage(String, String|Throwable) / showInfoNotification(String, String).
 */
final class DetectTMECommand {

    private static final String TITLE = "SegTME";
    private final QuPathGUI qupath;

    DetectTMECommand(QuPathGUI qupath) {
        this.qupath = qupath;
    }

    void run() {
        var imageData = qupath.getImageData();
        if (imageData == null) {
            Dialogs.showErrorMessage(TITLE, "Open an image first.");
            return;
        }
        var hierarchy = imageData.getHierarchy();
        List<PathObject> selected = List.copyOf(hierarchy.getSelectionModel().getSelectedObjects());
        int n = SegTME.targets(hierarchy, selected, TargetRule.of(TargetRule.Scope.SELECTED)).size();
        if (n == 0) {
            Dialogs.showErrorMessage(TITLE, "Select one or more area annotations first (SegTME tissue annotations are never analysed).");
            return;
        }
        if (!showOptionsDialog(n))
            return;
        var viewer = qupath.getViewer();
        boolean sameImage = viewer != null && viewer.getImageData() == imageData;
        RunSettings settings;
        try {
            settings = SegTMEPrefs.toSettings(sameImage ? viewer.getZPosition() : 0, sameImage ? viewer.getTPosition() : 0);
            settings.toClientConfig();
        } catch (IllegalArgumentException e) {
            Dialogs.showErrorMessage(TITLE, e.getMessage());
            return;
        }
        CancelSignal cancel = new CancelSignal();
        Task<List<SegTME.Result>> task = new Task<>() {
            @Override
            protected List<SegTME.Result> call() throws Exception {
                return SegTME.detectTME(imageData, selected, settings, p -> {
                    updateProgress(p.fraction(), 1.0);
                    updateMessage(p.stage() + " (tiles " + p.tilesDone() + "/" + p.tilesExpected() + ", nuclei " + p.nucleiSoFar() + ")");
                }, cancel);
            }
        };
        Stage window = progressWindow(task, cancel);
        task.setOnSucceeded(e -> {
            window.close();
            int nuclei = task.getValue().stream().mapToInt(SegTME.Result::nuclei).sum();
            int t = task.getValue().stream().mapToInt(SegTME.Result::tissueAnnotations).sum();
            Dialogs.showInfoNotification(TITLE, "Detected " + nuclei + " nuclei" + (t > 0 ? " and " + t + " tissue regions" : "")
                    + " in " + task.getValue().size() + " annotation(s).");
        });
        task.setOnFailed(e -> {
            window.close();
            Throwable t = task.getException();
            if (t instanceof CancellationException)
                Dialogs.showInfoNotification(TITLE, "Cancelled: the annotation in progress is unchanged (finished ones are kept).");
            else
                Dialogs.showErrorMessage(TITLE, t);
        });
        window.show();
        Thread worker = new Thread(task, "segtme-detect");
        worker.setDaemon(true);
        worker.start();
    }

    /** Options bound to the persistent preferences; returns false if the user cancels. */
    private static boolean showOptionsDialog(int nAnnotations) {
        var server = new TextField(SegTMEPrefs.SERVER.get());
        var token = new PasswordField();
        token.setText(SegTMEPrefs.TOKEN.get());
        boolean envToken = RunSettings.resolveToken("", System::getenv) != null;
        token.setPromptText(envToken ? "empty = SEGTME_TOKEN (set)" : "empty = SEGTME_TOKEN (not set)");
        var tls = new CheckBox("TLS");
        tls.setSelected(SegTMEPrefs.TLS.get());
        var caFile = new TextField(SegTMEPrefs.CA_FILE.get());
        caFile.setPromptText("CA / server certificate (PEM); empty = system roots");
        var browse = new Button("Choose…");
        browse.setOnAction(e -> {
            var chooser = new FileChooser();
            chooser.setTitle("TLS CA file (PEM)");
            File f = chooser.showOpenDialog(browse.getScene().getWindow());
            if (f != null) {
                caFile.setText(f.getAbsolutePath());
                tls.setSelected(true);
            }
        });
        var model = new ComboBox<String>();
        model.setEditable(true);
        model.setPromptText("empty = server default");
        model.setValue(SegTMEPrefs.MODEL.get());
        var status = new Label();
        var refresh = new Button("List models");
        refresh.setOnAction(e -> listModels(server.getText(), token.getText(), tls.isSelected(), caFile.getText(), model, status));
        var tile = new Spinner<Integer>(0, 4096, SegTMEPrefs.TILE_SIZE.get(), 32);
        var overlap = new Spinner<Integer>(-1, 1024, SegTMEPrefs.OVERLAP.get(), 8);
        var output = new ChoiceBox<String>();
        output.getItems().addAll("Detections", "Cells");
        output.setValue(SegTMEPrefs.CELLS.get() ? "Cells" : "Detections");
        var expansion = new Spinner<Double>(0.0, 50.0, SegTMEPrefs.CELL_EXPANSION.get(), 0.5);
        expansion.disableProperty().bind(output.valueProperty().isNotEqualTo("Cells"));
        var narrative = new CheckBox("Write a narrative into the annotation description");
        narrative.setSelected(SegTMEPrefs.NARRATIVE.get());
        var grid = new GridPane();
        grid.setHgap(8);
        grid.setVgap(6);
        int r = 0;
        grid.addRow(r++, new Label("Server (host:port)"), server);
        grid.addRow(r++, new Label("Token"), token);
        grid.addRow(r++, tls, new HBox(6, caFile, browse));
        grid.addRow(r++, new Label("Model"), new HBox(6, model, refresh));
        grid.add(status, 1, r++);
        grid.addRow(r++, new Label("Output"), output);
        grid.addRow(r++, new Label("Cell expansion (µm)"), expansion);
        grid.addRow(r++, new Label("Tile size (px at model MPP, 0 = model's)"), tile);
        grid.addRow(r++, new Label("Overlap (px at model MPP, -1 = model's)"), overlap);
        grid.add(narrative, 0, r++, 2, 1);
        grid.add(new Label(nAnnotations + " annotation(s) will be analysed; their earlier SegTME objects are replaced."), 0, r, 2, 1);
        listModels(server.getText(), token.getText(), tls.isSelected(), caFile.getText(), model, status);
        if (!Dialogs.showConfirmDialog("Detect TME", grid))
            return false;
        SegTMEPrefs.SERVER.set(server.getText().strip());
        SegTMEPrefs.TOKEN.set(token.getText().strip());
        SegTMEPrefs.TLS.set(tls.isSelected() || !caFile.getText().isBlank());
        SegTMEPrefs.CA_FILE.set(caFile.getText().strip());
        SegTMEPrefs.MODEL.set(model.getValue() == null ? "" : model.getValue().strip());
        SegTMEPrefs.TILE_SIZE.set(tile.getValue());
        SegTMEPrefs.OVERLAP.set(overlap.getValue());
        SegTMEPrefs.CELLS.set("Cells".equals(output.getValue()));
        SegTMEPrefs.CELL_EXPANSION.set(expansion.getValue());
        SegTMEPrefs.NARRATIVE.set(narrative.isSelected());
        return true;
    }

    /** Fills the model list from the server's ListModels, in the background. */
    private static void listModels(String server, String token, boolean tls, String caFile, ComboBox<String> model, Label status) {
        status.setText("asking " + server + " for its models…");
        Thread t = new Thread(() -> {
            try {
                var settings = new RunSettings(server, RunSettings.resolveToken(token, System::getenv), tls,
                        caFile == null || caFile.isBlank() ? null : java.nio.file.Path.of(caFile.strip()), "", 0, -1,
                        null, RunSettings.DEFAULT_CELL_EXPANSION_UM, true, null, 0, 0);
                var config = settings.toClientConfig();
                try (var client = new SegTMEClient(config)) {
                    var names = client.listModels().stream().map(m -> m.getName()).toList();
                    String dflt = client.getInfo().getDefaultModel();
                    Platform.runLater(() -> {
                        String keep = model.getValue();
                        model.getItems().setAll(names);
                        model.setValue(keep);
                        status.setText(names.size() + " model(s); server default: " + dflt);
                    });
                }
            } catch (Exception e) {
                Platform.runLater(() -> status.setText("cannot list models: " + e.getMessage()));
            }
        }, "segtme-list-models");
        t.setDaemon(true);
        t.start();
    }

    private static Stage progressWindow(Task<?> task, CancelSignal cancel) {
        var label = new Label();
        label.textProperty().bind(task.messageProperty());
        var bar = new ProgressBar();
        bar.setPrefWidth(360);
        bar.progressProperty().bind(task.progressProperty());
        var cancelButton = new Button("Cancel");
        cancelButton.setOnAction(e -> {
            cancelButton.setDisable(true);
            cancel.cancel(); // cancels the gRPC call: the server stops this job's work
        });
        var box = new VBox(8, label, bar, cancelButton);
        box.setPadding(new Insets(12));
        var stage = new Stage();
        stage.initModality(Modality.NONE);
        stage.setTitle("SegTME: Detect TME");
        stage.setScene(new Scene(box));
        stage.setOnCloseRequest(e -> cancel.cancel());
        return stage;
    }

    /** Extensions &gt; SegTME &gt; Test server connection. */
    static void testConnection() {
        Thread t = new Thread(() -> {
            String server = SegTMEPrefs.SERVER.get();
            try {
                var config = SegTMEPrefs.toSettings(0, 0).toClientConfig();
                try (var client = new SegTMEClient(config)) {
                    var info = client.getInfo();
                    var models = client.listModels().stream().map(m -> m.getName() + " (" + m.getMpp() + " µm/px)").toList();
                    String msg = "SegTME " + info.getVersion() + " on " + info.getDevice() + " at " + server
                            + (config.tls() ? " (TLS)" : "") + (config.bearerToken() != null ? " with a token" : "")
                            + "\nModels: " + String.join(", ", models) + "\nDefault: " + info.getDefaultModel();
                    Platform.runLater(() -> Dialogs.showInfoNotification(TITLE, msg));
                }
            } catch (Exception e) {
                Platform.runLater(() -> Dialogs.showErrorMessage(TITLE, "Cannot reach the SegTME server at " + server + ":\n" + e.getMessage()));
            }
        }, "segtme-test-connection");
        t.setDaemon(true);
        t.start();
    }
}
