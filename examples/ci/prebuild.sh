#!/usr/bin/env bash
# The llmpack CI pre-build step, shared by github-actions.yml and gitlab-ci.yml (and run by
# tests/test_build.py against a registry on 127.0.0.1):
#   1. `llmpack build`   quantize -> measure (gates: exit 1 names the gate) -> pack; cached ("up to date")
#   2. `skopeo copy`     push the OCI image layout exactly as llmpack wrote it (digests preserved)
#   3. `buildah bud`     optional: build the generated Dockerfile on a base image (BASE_IMAGE) and push it
#
# Environment:
#   REGISTRY        required, e.g. ghcr.io/acme or registry.gitlab.com/acme/models
#   IMAGE           repository name under REGISTRY (default: the pack name)
#   LLMPACK_CONFIG  the build file (default: llmpack.toml)
#   REGISTRY_CREDS  user:password for skopeo/buildah (optional; or log in beforehand)
#   TLS_VERIFY      true (default) or false for a plain-HTTP registry on loopback
#   BASE_IMAGE      when set, also build and push "$REGISTRY/$IMAGE:$TAG-serve" FROM this image
#   PYTHON          python with llmpack installed (default: python3)
set -euo pipefail

: "${REGISTRY:?set REGISTRY, e.g. ghcr.io/acme}"
CONFIG="${LLMPACK_CONFIG:-llmpack.toml}"
TLS_VERIFY="${TLS_VERIFY:-true}"
PYTHON="${PYTHON:-python3}"

# 1. quantize, measure, pack (only what changed); the JSON summary says where everything is.
"$PYTHON" -m llmpack build -c "$CONFIG" --format json > build-summary.json
read -r OCI TAG REF DIGEST < <("$PYTHON" - <<'PY'
import json
stages = {s["name"]: s for s in json.load(open("build-summary.json"))["stages"]}
d = stages["pack"]["details"]
print(d["oci"], d["tag"], d["reference"], d["manifest_digest"])
PY
)
IMAGE="${IMAGE:-${REF%%:*}}"
CREDS=()
if [ -n "${REGISTRY_CREDS:-}" ]; then CREDS=(--dest-creds "$REGISTRY_CREDS"); fi

# 2. push the OCI layout; the registry reports the same manifest digest llmpack computed.
skopeo copy --quiet --preserve-digests --dest-tls-verify="$TLS_VERIFY" "${CREDS[@]}" \
  "oci:$OCI:$TAG" "docker://$REGISTRY/$IMAGE:$TAG"
echo "pushed $REGISTRY/$IMAGE:$TAG@$DIGEST"

# 3. optionally, a serving image from the generated Dockerfile.
if [ -n "${BASE_IMAGE:-}" ]; then
  CONTEXT="$(dirname "$OCI")"
  DOCKERFILE="$CONTEXT/Dockerfile"
  # buildah < 1.32 (Debian 12 ships 1.28) rejects `COPY --link`; drop the flag there (same result, less caching).
  BUILDAH_VERSION="$(buildah --version | awk '{print $3}')"
  if [ "$(printf '%s\n' 1.32 "$BUILDAH_VERSION" | sort -V | head -1)" != 1.32 ]; then
    sed 's/^COPY --link /COPY /' "$DOCKERFILE" > "$CONTEXT/Dockerfile.nolink"
    DOCKERFILE="$CONTEXT/Dockerfile.nolink"
  fi
  buildah bud --quiet ${BUILDAH_ARGS:-} --build-arg BASE_IMAGE="$BASE_IMAGE" -f "$DOCKERFILE" \
    -t "$REGISTRY/$IMAGE:$TAG-serve" "$CONTEXT"
  BCREDS=()
  if [ -n "${REGISTRY_CREDS:-}" ]; then BCREDS=(--creds "$REGISTRY_CREDS"); fi
  buildah push --quiet --tls-verify="$TLS_VERIFY" "${BCREDS[@]}" "$REGISTRY/$IMAGE:$TAG-serve"
  echo "pushed $REGISTRY/$IMAGE:$TAG-serve"
fi
