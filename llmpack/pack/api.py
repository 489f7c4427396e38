"""``llmpack.pack``: a model directory → Dockerfile stub + build context + OCI image layout.

Output (``out/``)::

    Dockerfile          ARG BASE_IMAGE, labels, one COPY --link per shard, non-root USER, runtime block
    .dockerignore       excludes oci/, caches, VCS dirs
    model/              the model files (hard links; copies across file systems)
    oci/                OCI image layout: oci-layout, index.json (tag), blobs/sha256/...

The OCI image holds one layer per weight shard, then one small layer with config, tokenizer and
``llmpack.json``; files sit under ``/models/<name>/``. Everything is deterministic: the same model
files give the same manifest digest, whatever their mtimes, owners or the umask.

Re-packing into the same ``out`` is incremental: layers whose files did not change (same size, mtime,
inode) are taken from ``out/.llmpack-pack-cache.json`` without reading the shard, and blobs already
present are never rewritten.

Example:
    >>> import llmpack
    >>> res = llmpack.pack("model-int8", "build/", name="smollm2", tag="int8")  # doctest: +SKIP
    >>> res.manifest_digest                                                     # doctest: +SKIP
    'sha256:...'
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from llmpack._atomic import atomic_write
from llmpack._jsonfile import read_json_object
from llmpack._env import ENV_MODEL
from llmpack._output import progress
from llmpack.constants import (
    ANN_CREATED,
    ANN_REF_NAME,
    ANN_REVISION,
    ANN_TITLE,
    ANN_VERSION,
    CONFIG_FILE,
    MANIFEST_FILE,
    MODELS_ROOT,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
)
from llmpack.errors import IntegrityError
from llmpack.pack import modelpack
from llmpack.pack.context import (
    _CACHE_VERSION,
    CACHE_FILE,
    LOCK_FILE,
    _cache_key,
    _load_cache,
    pack_lock,
    _plan_layers,
    _prepare_out,
    _stats,
    _sync_context,
)
from llmpack.pack.deploy import DEPLOY_DIR, DeploySpec, render_deploy
from llmpack.pack.dockerfile import NONROOT_USER, render_dockerfile, render_dockerignore, runtime_spec
from llmpack.pack.files import ModelFile, collect_files
from llmpack.pack.oci import BlobStore, Descriptor, write_layer
from llmpack.pack.options import ARTIFACTS, PackOptions, check_name, default_name
from llmpack.pack.options import epoch as _epoch
from llmpack.pack.options import platforms as _platforms
from llmpack.pack.options import rfc3339 as _rfc3339
from llmpack.pack.registry_limits import registry_warnings
from llmpack.pack.result import LayerResult, PackResult
from llmpack.pack.tar import layer_members, tar_size

__all__ = ["pack", "PackResult", "LayerResult", "PackOptions", "ARTIFACTS", "CACHE_FILE", "LOCK_FILE", "default_name"]

_DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OUT_FIX = "check the output directory"
_WHEELS_README = """\
Wheels for the Dockerfile's build stage (runtime llmpack): `pip install --find-links` reads this folder.
Offline builds: put llmpack's wheel and its dependencies here (pip wheel -w wheels/ ...) and pass
--build-arg PIP_ARGS=--no-index.
"""


def _read_llmpack_manifest(model_dir: Path) -> dict[str, Any] | None:
    if not (model_dir / MANIFEST_FILE).is_file():
        return None
    from llmpack.checkpoint.manifest import read_manifest

    return read_manifest(model_dir).to_dict()


def _check_manifest_sizes(model_dir: Path, files: Sequence[ModelFile], manifest: dict[str, Any] | None) -> None:
    """Cheap consistency check: every file llmpack.json records exists with the recorded size."""
    if not manifest:
        return
    by_rel = {f.rel: f for f in files}
    for rel, entry in sorted((manifest.get("files") or {}).items()):
        if not isinstance(entry, dict) or "size" not in entry:
            continue
        f = by_rel.get(rel)
        if f is None:
            if not (model_dir / rel).exists():
                raise IntegrityError(f"{model_dir / rel} is recorded in {MANIFEST_FILE} but missing: "
                                     "restore it or re-create the model with `llmpack quantize`")
            continue
        if f.size != int(entry["size"]):
            raise IntegrityError(f"{model_dir / rel} has {f.size} bytes, {MANIFEST_FILE} records {entry['size']}: "
                                 "the model was modified; run `llmpack verify` and re-create it")


def pack(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
         tag: str = "latest", base_image: str | None = None, runtime: str = "none", artifact: str = "image",
         compression: str = "none", source_date_epoch: int | None = None, allow_files: Iterable[str] = (),
         overwrite: bool = False, platform: str = "linux/amd64", registry: str | None = None,
         server_image: str | None = None, quiet: bool = False, options: PackOptions | None = None) -> PackResult:
    """Pack a model directory into ``out/``: Dockerfile stub, build context and OCI image layout.

    Args:
        model_dir: an llmpack model dir (or any HF dir with safetensors shards).
        out: output directory; re-packing into a previous pack output is incremental.
        name: image name and the directory ``/models/<name>`` (default: from ``model_dir``'s name).
        tag: the tag in ``index.json`` (``org.opencontainers.image.ref.name``).
        base_image: default ``BASE_IMAGE`` of the Dockerfile (default: the runtime's image).
        runtime: ``none`` (data-only image) or ``vllm``.
        artifact: ``image`` (OCI image) or ``modelpack`` (CNCF ModelPack artifact).
        compression: ``none`` (default; weights barely compress), ``gzip`` or ``zstd`` (needs ``zstandard``).
        source_date_epoch: mtime of every tar entry and ``created``; default ``$SOURCE_DATE_EPOCH`` or 0.
        allow_files: relative paths or globs of secret-looking files that may be packed anyway.
        overwrite: write into an existing non-empty directory that is not a pack output.
        platform: ``os/arch[/variant]`` recorded in the image config; several, comma-separated
            (``linux/amd64,linux/arm64``), write an OCI image index with one manifest per platform over the same
            layers (the tag then names the index).
        registry: where the image will be pushed (``ghcr.io/org``): the deploy files reference
            ``<registry>/<name>:<tag>@<digest>``.
        server_image: the serving image for the deploy files, pinned by digest (default: the runtime's base
            where it is the server and pinned, as for ``vllm``).
        quiet: no progress bar.
        options: all of the above as one :class:`~llmpack.pack.options.PackOptions` (then leave the keywords
            at their defaults).

    Returns:
        A :class:`PackResult` with the manifest digest, layers, paths and bytes written.

    Raises:
        SourceNotFoundError, SecretFileError, UnsafePathError, BadInputError: bad input (exit 2).
        OutputExistsError, OutputLockedError, OutputWriteError: output problems.
        IntegrityError: a file changed while packing or disagrees with ``llmpack.json`` (exit 3).

    Example:
        >>> res = pack("model-int8", "build", name="smollm2", tag="int8")  # doctest: +SKIP
        >>> [layer.files for layer in res.layers][-1]                      # doctest: +SKIP
        ('config.json', 'llmpack.json', 'model.safetensors.index.json', 'tokenizer.json')
    """
    t0 = time.perf_counter()
    allowed = (allow_files,) if isinstance(allow_files, str) else tuple(allow_files)
    o = PackOptions.from_keywords(
        options, name=name, tag=tag, base_image=base_image, runtime=runtime, artifact=artifact,
        compression=compression, source_date_epoch=source_date_epoch, allow_files=allowed,
        overwrite=overwrite, platform=platform, registry=registry, server_image=server_image, quiet=quiet)
    model_dir = Path(model_dir)
    out = Path(out)
    rt = runtime_spec(o.runtime)
    if o.compression == "zstd":
        from llmpack.pack.oci import _zstd_module

        _zstd_module()
    name = o.name if o.name is not None else check_name(default_name(model_dir))
    tag, base_image, artifact, compression = o.tag, o.base_image, o.artifact, o.compression
    registry, server_image, quiet = o.registry, o.server_image, o.quiet
    plats = _platforms(o.platform)
    epoch = _epoch(o.source_date_epoch)
    created = _rfc3339(epoch)

    selection = collect_files(model_dir, o.allow_files)
    files = selection.files
    manifest = _read_llmpack_manifest(model_dir)
    _check_manifest_sizes(model_dir, files, manifest)
    hf_config = read_json_object(model_dir / CONFIG_FILE)
    warnings = list(selection.warnings)

    _prepare_out(model_dir, out, o.overwrite)
    with pack_lock(out):
        return _pack_locked(
            model_dir=model_dir, out=out, files=files, name=name, tag=tag, base_image=base_image, rt_name=rt.name,
            artifact=artifact, compression=compression, epoch=epoch, created=created, plats=plats,
            manifest=manifest, hf_config=hf_config, warnings=warnings, quiet=quiet, t0=t0,
            repository=f"{registry.strip('/')}/{name}" if registry else name, server_image=server_image)


def _labels(name: str, version: str, created: str | None, revision: str, manifest: dict[str, Any] | None,
            rt_desc: str) -> dict[str, str]:
    from llmpack._version import __version__

    labels = {
        ANN_TITLE: name,
        ANN_VERSION: version,
        "org.opencontainers.image.description": f"{name}: model files in {MODELS_ROOT}/{name} ({rt_desc})",
        "io.llmpack.model.path": f"{MODELS_ROOT}/{name}",
        "io.llmpack.version": str((manifest or {}).get("llmpack_version") or __version__),
    }
    if created:
        labels[ANN_CREATED] = created
    if revision:
        labels[ANN_REVISION] = revision
    method = ((manifest or {}).get("recipe") or {}).get("method")
    if method:
        labels["io.llmpack.method"] = str(method)
    return labels


def _revision(manifest: dict[str, Any] | None) -> str:
    source = (manifest or {}).get("source") or {}
    for key in ("revision", "commit"):
        if isinstance(source, dict) and source.get(key):
            return str(source[key])
    return ""


def _pack_locked(*, model_dir: Path, out: Path, files: list[ModelFile], name: str, tag: str,
                 base_image: str | None, rt_name: str, artifact: str, compression: str, epoch: int, created: str,
                 plats: list[dict[str, str]], manifest: dict[str, Any] | None, hf_config: dict[str, Any] | None,
                 warnings: list[str], quiet: bool, t0: float, repository: str,
                 server_image: str | None) -> PackResult:
    rt = runtime_spec(rt_name)
    ctx = out / "model"
    _sync_context(files, ctx)

    store = BlobStore(out / "oci")
    cache = _load_cache(out)
    new_cache: dict[str, Any] = {}
    plans = _plan_layers(files, artifact=artifact, name=name, compression=compression, created=created)

    todo_bytes = 0
    hits: dict[int, dict[str, Any]] = {}
    for i, plan in enumerate(plans):
        key = _cache_key(plan.prefix, plan.files, compression, epoch, plan.media_type)
        entry = cache.get(key)
        if (entry and entry.get("stats") == _stats(plan.files)
                and store.has(str(entry.get("digest")), int(entry.get("size", -1)))):
            hits[i] = entry
        else:
            todo_bytes += sum(f.size for f in plan.files)

    layers: list[LayerResult] = []
    with progress(todo_bytes, f"pack {name}", quiet=quiet) as bar:
        for i, plan in enumerate(plans):
            key = _cache_key(plan.prefix, plan.files, compression, epoch, plan.media_type)
            rels = tuple(f.rel for f in plan.files)
            if i in hits:
                e = hits[i]
                store.blobs_reused += 1
                layers.append(LayerResult(e["digest"], int(e["size"]), plan.media_type, e["diff_id"], rels, True))
                new_cache[key] = e
                continue
            stats_before = _stats(plan.files)
            members = layer_members([(f.rel, f.path, f.size) for f in plan.files], prefix=plan.prefix)
            blob = write_layer(store, members, mtime=epoch, compression=compression,
                               expected_tar_size=tar_size(members, epoch), on_progress=bar.update)
            if _stats(plan.files) != stats_before:
                raise IntegrityError(f"{plan.files[0].path} changed while it was being packed: "
                                     "do not modify the model while packing, then pack again")
            layers.append(LayerResult(blob.digest, blob.size, plan.media_type, blob.diff_id, rels, not blob.written))
            new_cache[key] = {"stats": stats_before, "digest": blob.digest, "size": blob.size,
                              "diff_id": blob.diff_id}

    revision = _revision(manifest)
    version = tag
    layer_desc = [Descriptor(layer.media_type, layer.digest, layer.size, plan.annotations)
                  for layer, plan in zip(layers, plans)]
    if artifact == "image":
        labels = _labels(name, version, created, revision, manifest, rt.description)
        model_path = f"{MODELS_ROOT}/{name}"
        man_ann = {ANN_TITLE: name, ANN_VERSION: version, ANN_CREATED: created}
        if revision:
            man_ann[ANN_REVISION] = revision
        per_platform = []
        for plat in plats:  # one config + manifest per platform, all over the same layers
            image_config: dict[str, Any] = {
                "created": created,
                **plat,
                "config": {
                    "Env": [_DEFAULT_PATH, f"{ENV_MODEL}={model_path}"],
                    "Labels": labels,
                    "User": NONROOT_USER,
                    "WorkingDir": model_path,
                },
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                "history": [{"created": created, "created_by": f"llmpack pack: COPY {', '.join(layer.files)} "
                             f"{model_path}/"} for layer in layers],
            }
            config_desc = store.put_json(image_config, MT_OCI_CONFIG)
            man: dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                                   "config": config_desc.to_json(),
                                   "layers": [d.to_json() for d in layer_desc], "annotations": man_ann}
            per_platform.append((plat, store.put_json(man, MT_OCI_MANIFEST), config_desc))
        config_desc = per_platform[0][2]
        artifact_type = None
    else:
        mp_config = modelpack.model_config(name=name, version=version, created=created,
                                           diff_ids=[layer.diff_id for layer in layers], hf_config=hf_config,
                                           revision=revision)
        config_desc = store.put_json(mp_config, modelpack.CONFIG_MEDIA_TYPE)
        man_ann = {ANN_TITLE: name, ANN_VERSION: version, ANN_CREATED: created}
        if revision:
            man_ann[ANN_REVISION] = revision
        man = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "artifactType": modelpack.ARTIFACT_TYPE,
               "config": config_desc.to_json(), "layers": [d.to_json() for d in layer_desc],
               "annotations": man_ann}
        artifact_type = modelpack.ARTIFACT_TYPE
    if artifact != "image":
        manifest_desc, top_type = store.put_json(man, MT_OCI_MANIFEST), MT_OCI_MANIFEST
    elif len(per_platform) == 1:
        manifest_desc, top_type = per_platform[0][1], MT_OCI_MANIFEST
    else:
        image_index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                       "manifests": [{**d.to_json(), "platform": plat} for plat, d, _ in per_platform],
                       "annotations": man_ann}
        manifest_desc, top_type = store.put_json(image_index, MT_OCI_INDEX), MT_OCI_INDEX

    # index.json: this tag replaces an older entry with the same tag; other tags are kept
    entries: dict[str, Descriptor] = {}
    for m in store.read_index_manifests():
        ref = (m.get("annotations") or {}).get(ANN_REF_NAME)
        if ref and ref != tag and store.has(str(m.get("digest", "")), int(m.get("size", -1))):
            entries[ref] = Descriptor(str(m.get("mediaType", MT_OCI_MANIFEST)), m["digest"], int(m["size"]),
                                      {ANN_REF_NAME: ref}, m.get("artifactType"))
    entries[tag] = Descriptor(top_type, manifest_desc.digest, manifest_desc.size, {ANN_REF_NAME: tag},
                              artifact_type)
    store.write_layout_file()
    store.write_index([entries[k] for k in sorted(entries)])

    # Dockerfile stub + .dockerignore (the image variant's layout, whatever the artifact)
    weight_rels = [f.rel for f in files if f.kind == "weight"]
    small_rels = [f.rel for f in files if f.kind != "weight"]
    dockerfile = render_dockerfile(name, weight_rels, small_rels, runtime=rt.name, base_image=base_image,
                                   labels=_labels(name, version, None, revision, manifest, rt.description))
    atomic_write(out / "Dockerfile", dockerfile, fix=_OUT_FIX)
    atomic_write(out / ".dockerignore", render_dockerignore(), fix=_OUT_FIX)
    notes: list[str] = []
    deploy: dict[str, str] = {}
    if rt.build_stage:  # the build stage's COPY wheels/: offline builds drop wheels here
        (out / "wheels").mkdir(exist_ok=True)
        atomic_write(out / "wheels" / "README.txt", _WHEELS_README, fix=_OUT_FIX)
    deploy_dir = out / DEPLOY_DIR
    if artifact == "image":
        spec = DeploySpec(name=name, repository=repository, tag=tag, digest=manifest_desc.digest, runtime=rt.name,
                          model_bytes=sum(f.size for f in files), server_image=server_image, base_image=base_image)
        deploy = render_deploy(spec)
        for rel, text in deploy.items():
            (deploy_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(deploy_dir / rel, text, fix=_OUT_FIX)
        for old in sorted(deploy_dir.rglob("*.yaml")):  # files an earlier pack wrote and this one does not
            if old.relative_to(deploy_dir).as_posix() not in deploy:
                old.unlink()
        if "k8s/deployment.yaml" not in deploy:
            notes.append("no Kubernetes manifests: no pinned server image for runtime "
                         f"{spec.serving!r}; build and push the Dockerfile's image, then pack with "
                         "--server-image REPO@sha256:...")
    store.gc()
    atomic_write(out / CACHE_FILE, json.dumps({"version": _CACHE_VERSION, "layers": new_cache}, sort_keys=True, indent=1),
                 fix=_OUT_FIX)

    warnings.extend(registry_warnings([layer.size for layer in layers], [", ".join(layer.files) for layer in layers]))
    written_meta = store.bytes_written
    return PackResult(
        name=name, tag=tag, artifact=artifact, runtime=rt.name, compression=compression,
        manifest_digest=manifest_desc.digest, config_digest=config_desc.digest, layers=layers, out=out,
        paths={"dockerfile": str(out / "Dockerfile"), "dockerignore": str(out / ".dockerignore"),
               "context": str(ctx), "oci": str(out / "oci"), "index": str(out / "oci" / "index.json")},
        bytes_written=written_meta, blobs_written=store.blobs_written, blobs_reused=store.blobs_reused,
        warnings=warnings, seconds=time.perf_counter() - t0,
        platforms=["/".join(p.values()) for p in plats], notes=notes,
        deploy={rel: str(deploy_dir / rel) for rel in sorted(deploy)} if artifact == "image" else {},
    )
