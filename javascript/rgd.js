// The Unlearn tab's button (rgd_ui.webui): the job gets a task id, so the UI's own progress bar, ETA and live preview
// follow it, as they follow the UI's Checkpoint Merger. The live preview is the loss chart, shown over rgd_chart.
function rgd_submit() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById("rgd_status"), gradioApp().getElementById("rgd_chart"), function() {});
    var values = Array.from(arguments);
    values[0] = id;
    return values;
}
