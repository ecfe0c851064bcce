"""Save mx GGUF: write the quantized model as ``<model>_mxN_N.gguf`` where UnetLoaderGGUF finds it."""
from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

import folder_paths

from ..quant.atomic import checked_name, write_new
from ..quant.gguf_file import read_summary
from ..quant.mixed import MixedModel
from ..quant.optimize import GiB
from ..quant.patches import describe_loras, parse_loras
from ..quant.tensor_plan import output_name
from .common import CATEGORY, MixedGGUF, progress_bar

FOLDERS = ["unet", "diffusion_models"]


def model_folder(name: str) -> Path:
    """models/<name> as ComfyUI's diffusion-model paths list it (models/unet is one of them)."""
    paths = [Path(p) for p in folder_paths.get_folder_paths("diffusion_models")]
    return next((p for p in paths if p.name == name), Path(folder_paths.models_dir) / name)


def save_unique(mixed: MixedModel, folder: Path, file_name: str, model_name: str) -> Path:
    """Save under ``file_name``, or ``<stem>_2.gguf``, ``_3``... : an existing file is never replaced."""
    bar = progress_bar(sum(t.numel for t in mixed.plan))
    return write_new(folder / file_name, lambda path: mixed.save(
        path, name=model_name, progress=lambda done, total, _key: bar(done, total)).path)


class SaveMxGGUF(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MxSaveMxGGUF",
            display_name="Save mx GGUF",
            category=CATEGORY,
            description="Writes <model>_mxN_N.gguf (N_N: bits per parameter) into models/unet, where "
                        "Unet Loader (GGUF) loads it. Never overwrites: an existing name gets _2, _3...",
            inputs=[
                MixedGGUF.Input("mx_gguf", tooltip="The quantized model from Mixed GGUF Quantize."),
                io.String.Input("model_name", default="flux1-dev",
                                tooltip="The model's name, first part of the file name (a name, not a path)."),
                io.Combo.Input("folder", options=FOLDERS, default=FOLDERS[0],
                               tooltip="models/ subfolder to write into; both are listed by the GGUF loader."),
            ],
            outputs=[io.String.Output("file_name", tooltip="The name of the file written, for a loader.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, mx_gguf: MixedModel, model_name: str, folder: str) -> io.NodeOutput:
        model_name = checked_name(model_name)
        if folder not in FOLDERS:
            raise ValueError(f"folder {folder!r} is not one of {FOLDERS}")
        target = model_folder(folder)
        target.mkdir(parents=True, exist_ok=True)
        path = save_unique(mx_gguf, target, checked_name(output_name(model_name, mx_gguf.bpw)), model_name)
        info = read_summary(path)
        text = (f"{path}\n{info['size_bytes'] / GiB:.2f} GiB, {info['bpw']:.3f} bits per parameter, "
                f"{info['n_tensors']} tensors")
        if info["loras"]:
            text += f"\nLoRAs baked in: {describe_loras(parse_loras(info['loras']))}"
        return io.NodeOutput(path.name, ui={"text": [text]})
