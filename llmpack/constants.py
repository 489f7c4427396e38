"""One source of truth for file names, media types and metadata keys."""

from __future__ import annotations

# --- model directory -------------------------------------------------------------------------
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MANIFEST_FILE = "llmpack.json"
SAFETENSORS_SINGLE_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
SAFETENSORS_SHARD_PATTERN = "model{suffix}.safetensors"  # huggingface_hub filename_pattern
SAFETENSORS_METADATA = {"format": "pt"}
MANIFEST_FORMAT_VERSION = 1
DEFAULT_MAX_SHARD_SIZE = "2GB"
TEMP_PREFIX = ".llmpack-tmp-"
LOCK_SUFFIX = ".llmpack.lock"

# Pickle-based checkpoints are never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Small files copied next to the weights.
AUX_FILE_PATTERNS = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "sentence_bert_config.json",
    "modules.json",
    "README.md",
    "LICENSE",
)

# --- FP16 -----------------------------------------------------------------------------------
FP16_MAX = 65504.0

# --- compressed-tensors ---------------------------------------------------------------------
CT_QUANT_METHOD = "compressed-tensors"
CT_FORMAT_INT = "int-quantized"
CT_FORMAT_FLOAT = "float-quantized"
CT_STATUS_COMPRESSED = "compressed"
WEIGHT_SCALE_SUFFIX = "weight_scale"

# --- environment: the variables and their readers are in llmpack._env -----------------------

# --- OCI ------------------------------------------------------------------------------------
OCI_LAYOUT_FILE = "oci-layout"
OCI_INDEX_FILE = "index.json"
OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_TITLE = "org.opencontainers.image.title"
ANN_VERSION = "org.opencontainers.image.version"
ANN_CREATED = "org.opencontainers.image.created"
ANN_REVISION = "org.opencontainers.image.revision"
ANN_SOURCE = "org.opencontainers.image.source"
# CNCF ModelPack
MT_MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MT_MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
ANN_MODELPACK_FILEPATH = "org.cncf.model.filepath"
REGISTRY_MAX_LAYER_BYTES = 10 * 1000**3
REGISTRY_MAX_LAYERS = 100
MODELS_ROOT = "/models"

# --- report ---------------------------------------------------------------------------------
REPORT_SCHEMA_VERSION = 1
