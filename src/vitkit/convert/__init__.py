"""Pretrained weights in (official/big_vision .npz, timm, Hugging Face, vitkit runs, hub ids) and exports out
(ONNX, safetensors, timm and transformers folders)."""

from __future__ import annotations

from vitkit.convert.checkpoint import Checkpoint, infer_config
from vitkit.convert.export import check_onnx, export_onnx
from vitkit.convert.files import ConversionError, UnsafeCheckpointError
from vitkit.convert.load import (
    LoadReport,
    adapt_input_channels,
    config_for,
    load_pretrained,
    model_from_source,
)
from vitkit.convert.peers import check_peer, save_peer_folder
from vitkit.convert.runs import save_model_file, save_run_dir
from vitkit.convert.sources import FORMATS, read_checkpoint

__all__ = [
    "FORMATS",
    "Checkpoint",
    "ConversionError",
    "LoadReport",
    "UnsafeCheckpointError",
    "adapt_input_channels",
    "check_onnx",
    "check_peer",
    "config_for",
    "export_onnx",
    "infer_config",
    "load_pretrained",
    "model_from_source",
    "read_checkpoint",
    "save_model_file",
    "save_peer_folder",
    "save_run_dir",
]
