package qupath.ext.segtme;

import javafx.application.Platform;
import javafx.concurrent.Task;
import javafx.geometry.Insets;
import javafx.scene.Scene;
import javafx.scene.control.Button;
import javafx.scene.control.CheckBox;
import javafx.scene.control.ChoiceBox;
import javafx.scene.control.Label;
import javafx.scene.control.ProgressBar;
import javafx.scene.control.Spinner;
import javafx.scene.control.TextField;
import javafx.scene.layout.GridPane;
import javafx.scene.layout.VBox;
import javafx.stage.Modality;
import javafx.stage.Stage;
import qupath.ext.segtme.client.CancelSignal;
import qupath.ext.segtme.client.ClientConfig;
import qupath.ext.segtme.client.SegTMEClient;
import qupath.fx.dialogs.Dialogs;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.objects.PathObject;

import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.stream.Collectors;

/**
 * Extensions &gt; SegTME &gt; Detect TME…: options dialog, then a background task with a progress window
 * whose Cancel button cancels the gRPC stream. Runs on the selected area annotations.
 * QuPath API relied on: QuPathGUI.getImageData() and the hierarchy's getSelectionModel().getSelectedObjects();
 * qupath.fx.dialogs.Dialogs.showConfirmDialog(String, Node) / showErrorMessage(String, String) /
 * showInfoNotification(String, String) (qupath-fxtras, Dialogs.java).
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
        List<PathObject> selected = imageData.getHierarchy().getSelectionModel().getSelectedObjects().stream()
                .filter(SegTME::isAreaAnnotation).collect(Collectors.toList());
        if (selected.isEmpty()) {
            Dialogs.showErrorMessage(TITLE, "Select one or more area annotations first.");
            return;
        }
        if (!showOptionsDialog(selected.size()))
            return;
        SegTME.Options options = SegTMEPrefs.toOptions();
        CancelSignal cancel = new CancelSignal();
        Task<List<SegTME.Result>> task = new Task<>() {
            @Override
            protected List<SegTME.Result> call() throws Exception {
                return SegTME.detectTME(imageData, selected, options, p -> {
                    updateProgress(p.fraction(), 1.0);
                    updateMessage(p.stage() + " (tiles " + p.tilesDone() + "/" + p.tilesExpected() + ", nuclei " + p.nucleiSoFar() + ")");
                }, cancel);
            }
        };
        Stage window = progressWindow(task, cancel);
        task.setOnSucceeded(e -> {
            window.close();
            int n = task.getValue().stream().mapToInt(SegTME.Result::nuclei).sum();
            int t = task.getValue().stream().mapToInt(SegTME.Result::tissueAnnotations).sum();
            Dialogs.showInfoNotification(TITLE, "Detected " + n + " nuclei" + (t > 0 ? " and " + t + " tissue regions" : "")
                    + " in " + task.getValue().size() + " annotation(s).");
        });
        task.setOnFailed(e -> {
            window.close();
            Throwable t = task.getException();
            if (t instanceof CancellationException)
                Dialogs.showInfoNotification(TITLE, "Cancelled: nothing was added to the annotation in progress.");
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
        var model = new TextField(SegTMEPrefs.MODEL.get());
        model.setPromptText("empty = server default");
        var tile = new Spinner<Integer>(0, 4096, SegTMEPrefs.TILE_SIZE.get(), 32);
        var overlap = new Spinner<Integer>(-1, 1024, SegTMEPrefs.OVERLAP.get(), 8);
        var output = new ChoiceBox<String>();
        output.getItems().addAll("Detections", "Cells");
        output.setValue(SegTMEPrefs.CELLS.get() ? "Cells" : "Detections");
        var narrative = new CheckBox("Write a narrative into the annotation description");
        narrative.setSelected(SegTMEPrefs.NARRATIVE.get());
        var grid = new GridPane();
        grid.setHgap(8);
        grid.setVgap(6);
        grid.addRow(0, new Label("Server (host:port)"), server);
        grid.addRow(1, new Label("Model"), model);
        grid.addRow(2, new Label("Tile size (px at model MPP, 0 = model's)"), tile);
        grid.addRow(3, new Label("Overlap (px at model MPP, -1 = model's)"), overlap);
        grid.addRow(4, new Label("Output"), output);
        grid.add(narrative, 0, 5, 2, 1);
        grid.add(new Label(nAnnotations + " annotation(s) selected; existing SegTME nuclei (and PAGET tissue regions) in them will be replaced."), 0, 6, 2, 1);
        if (!Dialogs.showConfirmDialog("Detect TME", grid))
            return false;
        SegTMEPrefs.SERVER.set(server.getText().strip());
        SegTMEPrefs.MODEL.set(model.getText().strip());
        SegTMEPrefs.TILE_SIZE.set(tile.getValue());
        SegTMEPrefs.OVERLAP.set(overlap.getValue());
        SegTMEPrefs.CELLS.set("Cells".equals(output.getValue()));
        SegTMEPrefs.NARRATIVE.set(narrative.isSelected());
        return true;
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
        var options = SegTMEPrefs.toOptions();
        Thread t = new Thread(() -> {
            var config = ClientConfig.builder(options.server()).tls(options.tls()).bearerToken(options.token()).connectAttempts(2).build();
            try (var client = new SegTMEClient(config)) {
                var info = client.getInfo();
                var models = client.listModels().stream().map(m -> m.getName() + " (" + m.getMpp() + " µm/px)").toList();
                String msg = "SegTME " + info.getVersion() + " on " + info.getDevice() + " at " + options.server()
                        + "\nModels: " + String.join(", ", models) + "\nDefault: " + info.getDefaultModel();
                Platform.runLater(() -> Dialogs.showInfoNotification(TITLE, msg));
            } catch (Exception e) {
                Platform.runLater(() -> Dialogs.showErrorMessage(TITLE, "Cannot reach the SegTME server at " + options.server() + ":\n" + e.getMessage()));
            }
        }, "segtme-test-connection");
        t.setDaemon(true);
        t.start();
    }
}
