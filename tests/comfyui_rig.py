"""A real ComfyUI server for the integration tests: find it, start it privately, run workflows.

ComfyUI is found via ``COMFYUI_PATH``, an enclosing ``custom_nodes/`` folder this pack sits
in, or ``~/comfy/ComfyUI``; its Python via ``COMFYUI_PYTHON`` or ``<ComfyUI>/.venv``. The
server runs on a free loopback port with a private base directory (models, output,
custom_nodes), so the tests never touch the user's folders. Its custom nodes are
ComfyUI-GGUF (from the install), this pack and the test-only fixture node.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

PACK_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_NODE = Path(__file__).resolve().parent / "comfyui_fixture_node"
PACK_NAME = "comfyui-mxgguf"
SETUP_HINT = ("install ComfyUI with ComfyUI-GGUF (see README: 'In ComfyUI') and set COMFYUI_PATH, "
              "or place this pack in ComfyUI/custom_nodes/")


def find_comfyui() -> tuple[Path, Path] | str:
    """(ComfyUI folder, its python), or the reason none was found."""
    looked = []
    if os.environ.get("COMFYUI_PATH"):  # an explicit choice: no falling back elsewhere
        candidates = [Path(os.environ["COMFYUI_PATH"])]
    else:
        candidates = [PACK_ROOT.parent.parent] if PACK_ROOT.parent.name == "custom_nodes" else []
        candidates.append(Path.home() / "comfy" / "ComfyUI")
    for root in candidates:
        looked.append(str(root))
        if not (root / "main.py").is_file():
            continue
        python = Path(os.environ.get("COMFYUI_PYTHON") or root / ".venv" / "bin" / "python")
        if not python.exists():
            return f"ComfyUI at {root} has no python at {python} (set COMFYUI_PYTHON)"
        if not (root / "custom_nodes" / "ComfyUI-GGUF" / "nodes.py").is_file():
            return f"ComfyUI at {root} has no custom_nodes/ComfyUI-GGUF"
        return root, python
    return f"no ComfyUI found (looked in {', '.join(looked)}); {SETUP_HINT}"


def run_in_comfyui(script: str, *args: object, timeout: float = 600) -> Any:
    """The JSON line a test script beside this file prints when ComfyUI's Python runs it from
    ComfyUI's folder (given the ComfyUI folder first); the test is skipped, saying why, where
    there is no ComfyUI."""
    import pytest

    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"real-ComfyUI integration test skipped: {found}")
    root, python = found
    r = subprocess.run([str(python), str(Path(__file__).with_name(script)), str(root), *map(str, args)], cwd=root,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One headless ComfyUI process with a private base directory."""

    def __init__(self, comfy_root: Path, python: Path, base: Path):
        self.root, self.python, self.base = comfy_root, python, base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        nodes = base / "custom_nodes"
        for sub in ("models/diffusion_models", "models/unet", "output", "input", "custom_nodes"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for name, target in (("ComfyUI-GGUF", comfy_root / "custom_nodes" / "ComfyUI-GGUF"),
                             (PACK_NAME, PACK_ROOT), ("mxgguf_test_nodes", FIXTURE_NODE)):
            if not (nodes / name).exists():
                (nodes / name).symlink_to(target, target_is_directory=True)
        self.proc: subprocess.Popen | None = None

    @property
    def models(self) -> Path:
        return self.base / "models" / "diffusion_models"

    @property
    def unet(self) -> Path:
        return self.base / "models" / "unet"

    @property
    def output(self) -> Path:
        return self.base / "output"

    def start(self, timeout: float = 120) -> None:
        with open(self.log_path, "w") as log:  # the server holds its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                 "--base-directory", str(self.base), "--disable-auto-launch"],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict | None = None) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
        return json.loads(data) if data else None

    def object_info(self, node: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node}" if node else ""))

    def queue(self, workflow: dict, client_id: str | None = None) -> str:
        """Queue a prompt; raise with ComfyUI's validation message if it is refused."""
        try:
            return self.post("/prompt", {"prompt": workflow, "client_id": client_id or uuid.uuid4().hex})["prompt_id"]
        except urllib.error.HTTPError as e:
            raise WorkflowError(f"prompt refused: {e.read().decode(errors='replace')}") from None

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The finished prompt's history entry; WorkflowError with the node's exception if it failed."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise WorkflowError(_error_text(status), status)
                if status.get("completed"):
                    return entry
            time.sleep(0.2)
        raise WorkflowError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, workflow: dict, timeout: float = 600) -> dict:
        return self.wait(self.queue(workflow), timeout)

    def interrupt(self) -> None:
        self.post("/interrupt")

    def free(self) -> None:
        """Unload models and drop the cache, so the next run loads files afresh."""
        self.post("/free", {"unload_models": True, "free_memory": True})


class Messages:
    """ComfyUI's websocket messages to one client (progress, executing...), read with the stdlib."""

    def __init__(self, server: ComfyServer):
        self.client_id = uuid.uuid4().hex
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=600)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={self.client_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def next(self) -> dict | None:
        """The next JSON message (None for binary ones, e.g. previews)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8), "big")
        payload = self._read(n)  # server frames are unmasked
        return json.loads(payload) if b0 & 0x0F == 1 else None

    def close(self) -> None:
        self.sock.close()


class WorkflowError(RuntimeError):
    def __init__(self, message: str, status: dict | None = None):
        super().__init__(message)
        self.status = status or {}


def _error_text(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}"
        if kind == "execution_interrupted":
            return "interrupted"
    return f"failed: {status}"


# ---------------------------------------------------------------- workflows

def loader(unet_name: str, kind: str = "safetensors") -> dict:
    """``safetensors`` (UNETLoader), ``gguf`` (UnetLoaderGGUF) or ``gguf-f32`` (advanced, dequant float32)."""
    if kind == "safetensors":
        return {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}}
    if kind == "gguf":
        return {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": unet_name}}
    return {"class_type": "UnetLoaderGGUFAdvanced",
            "inputs": {"unet_name": unet_name, "dequant_dtype": "float32", "patch_dtype": "default",
                       "patch_on_device": False}}


def capture(model: list, costs_file: str, types: str, step: int = -1, per_run: int = 1) -> dict:
    return {"class_type": "MxCaptureLayerCosts", "inputs": {"model": model, "costs_file": costs_file, "step": step,
                                                             "samples_per_run": per_run, "types": types}}


def quantize(model: list, costs: str, bpw: float, types: str = "all", max_slowdown: float = 0.0) -> dict:
    return {"class_type": "MxMixedGGUFQuantize", "inputs": {"model": model, "costs": costs,
                                                             "target": "bits per parameter", "value": bpw,
                                                             "max_slowdown": max_slowdown, "types": types}}


def save(mx: list, model_name: str) -> dict:
    return {"class_type": "MxSaveMxGGUF", "inputs": {"mx_gguf": mx, "model_name": model_name, "folder": "unet"}}


def sampling(model: list, seed: int, prefix: str, steps: int = 4, size: int = 64, cfg: float = 1.0,
             video: bool = False) -> dict:
    """Nodes that sample a MODEL output and save the latent: conditioning from the fixture node, an
    image latent (FLUX.1, Chroma, Qwen-Image, Lumina 2) or a one-frame video latent (Wan)."""
    latent = ({"class_type": "EmptyHunyuanLatentVideo",
               "inputs": {"width": size, "height": size, "length": 1, "batch_size": 1}} if video else
              {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}})
    return {
        "cond": {"class_type": "MxTestConditioning", "inputs": {"model": model, "seed": seed, "tokens": 8}},
        "latent": latent,
        "sample": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["cond", 0], "negative": ["cond", 1],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}},
    }


def step_seconds(server: ComfyServer, workflow: dict, node: str = "sample") -> float:
    """Median seconds between the sampler's consecutive progress messages (node ``node``), after
    its first step: a step's time without loading or the first step's allocations."""
    messages = Messages(server)
    try:
        prompt = server.queue(workflow, messages.client_id)
        stamps = []
        while True:
            m = messages.next()
            if m is None:
                continue
            if m["type"] == "progress" and m["data"].get("node") == node:
                stamps.append(time.perf_counter())
            if m["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                break
    finally:
        messages.close()
    server.wait(prompt)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps)


def sample_workflow(unet_name: str, kind: str, seed: int, prefix: str, **kw: Any) -> dict:
    return {"load": loader(unet_name, kind), **sampling(["load", 0], seed, prefix, **kw)}


def saved_latent(server: ComfyServer, entry: dict, node: str = "save") -> torch.Tensor:
    """The latent a SaveLatent node wrote in this prompt."""
    files = entry["outputs"][node]["latents"]
    f = files[0]
    return load_file(str(server.output / f["subfolder"] / f["filename"]))["latent_tensor"]
