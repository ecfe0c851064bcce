// Shows the text a node of this pack returns (summary, saved path) in a read-only box on the node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES = ["MxCaptureLayerCosts", "MxMixedGGUFQuantize", "MxSaveMxGGUF"];

app.registerExtension({
  name: "mxgguf.summary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.includes(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      if (!text) return;
      let widget = this.widgets?.find((w) => w.name === "mxgguf_info");
      if (!widget) {
        widget = ComfyWidgets.STRING(this, "mxgguf_info", ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.serialize = false;
      }
      widget.value = text;
      this.setSize?.(this.computeSize());
    };
  },
});
