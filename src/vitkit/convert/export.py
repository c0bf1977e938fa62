"""Export a model: ONNX with a dynamic batch axis (checked under onnxruntime) or self-describing safetensors."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Sequence

import torch

from vitkit.atomic import plain_file_mode
from vitkit.convert.files import ConversionError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING):
    """Raise the given loggers to `level` for the duration (the ONNX optimizer logs every pass at INFO)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class OnnxLoadError(ConversionError):
    """onnxruntime refused an exported file (an operator or opset it does not implement)."""


def written_opset(path: str) -> int:
    """The default-domain ONNX opset a file declares."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def eval_on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in eval mode on the CPU in fp32 (ONNX's input is fp32 images), the caller's left as it was: itself
    when it is so already, else a copy."""
    tensors = (*model.parameters(), *model.buffers())
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    fp32 = all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    return model if on_cpu and fp32 and not model.training else copy.deepcopy(model).cpu().float().eval()


def export_onnx(
    model: torch.nn.Module, path: str, *, opset: int = 18, img_size: tuple[int, int] | None = None
) -> str:
    """Write `model` (in eval mode on the CPU in fp32; the model given is not changed) as ONNX: input "images"
    (batch, C, H, W), output "logits" (batch, K); at the model's size, or `img_size` for a `dynamic_img_size`
    model (one size per file).

    The exporter writes opset 18 and converts to `opset` from there; an opset it cannot reach is an error (the
    file is not left behind)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ConversionError(
            "ONNX export needs onnx and onnxscript: pip install onnx onnxscript onnxruntime (vitkit's [export] extra)"
        ) from None
    dynamic = getattr(getattr(model, "cfg", None), "dynamic_img_size", False)
    size = tuple(img_size) if img_size and dynamic else tuple(model.cfg.img_size)
    if img_size and tuple(img_size) != tuple(model.cfg.img_size) and not dynamic:
        raise ConversionError(
            f"{path}: the model takes {model.cfg.img_size[0]}x{model.cfg.img_size[1]} images, not "
            f"{img_size[0]}x{img_size[1]} (set_img_size() first, or a dynamic_img_size model)"
        )
    if dynamic:
        log.warning("%s: exported at %dx%d only (the model's dynamic_img_size is not exported)", path, *size)
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opset <= newest:
        raise ConversionError(
            f"ONNX opset {opset}: this onnx ({onnx.__version__}) knows opsets 1 to {newest}"
        )
    model = eval_on_cpu(model)
    cfg = model.cfg
    example = torch.zeros(2, cfg.in_chans, *size)  # batch 2: a size-1 example would be specialised
    batch = torch.export.Dim("batch", min=1, max=4096)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # protobuf caps a file at 2 GB: bigger models keep their weights in "<path>.data" beside it
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > 1_500_000_000
    if external:
        tmp = path
    else:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".onnx")
        os.close(fd)
    try:
        # a failed version conversion logs its traceback: the opset check below reports it in one line
        with torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", level=logging.CRITICAL):
            torch.onnx.export(
                model,
                (example,),
                tmp,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=["images"],
                output_names=["logits"],
                opset_version=opset,
                external_data=external,
                verbose=False,
            )
        os.chmod(tmp, plain_file_mode())  # mkstemp's 0600: as a plainly written file, the umask decides
        got = written_opset(tmp)
        if got != opset:
            raise ConversionError(
                f"{path}: the exporter could not convert the model to ONNX opset {opset} (it stays at {got}); "
                f"--opset {got} exports it"
            )
        if tmp != path:
            os.replace(tmp, path)
    except BaseException:
        for f in (tmp, tmp + ".data") if external else (tmp,):  # a big model's weights lie beside it
            if os.path.exists(f):
                os.unlink(f)
        raise
    return path


def check_onnx(
    path: str, model: torch.nn.Module, batch_sizes: Sequence[int] = (1, 7), seed: int = 0
) -> dict[int, float]:
    """Max |onnxruntime - PyTorch| of the logits for random inputs of each batch size."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConversionError(
            "checking an ONNX export needs onnxruntime: pip install onnx onnxscript onnxruntime (vitkit's [export] extra)"
        ) from None
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types (InvalidGraph, NotImplemented, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxLoadError(f"{path}: onnxruntime {ort.__version__} cannot load it: {first[:300]}") from None
    model = eval_on_cpu(model)
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batch_sizes:
        x = torch.randn(b, cfg.in_chans, *cfg.img_size, generator=gen)  # (B, C, H, W)
        with torch.no_grad():
            ref = model(x)
        (out,) = session.run(["logits"], {"images": x.numpy()})
        if tuple(out.shape) != tuple(ref.shape):
            raise ConversionError(
                f"{path}: batch {b} gave logits {tuple(out.shape)}, PyTorch {tuple(ref.shape)}"
            )
        diffs[b] = float((torch.from_numpy(out) - ref).abs().max())
    return diffs
