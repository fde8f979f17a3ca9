#!/usr/bin/env python3
"""Writes an OCI image archive without Docker.

The archive is an OCI image layout in a tar (oci-layout, index.json,
blobs/sha256/...), the form `ctr images import` reads. Each layer is a tar
given on the command line (a root filesystem from mmdebstrap) or made here
from files (`--file SRC:DEST:MODE`), with fixed owners and times so the same
inputs give the same bytes. The image is named by the digest of its
manifest: `NAME:<12 hex digits>`, plus any `--alias` names, and the last line
printed is the content-tagged name.

Layers are stored gzip-compressed; a compressed layer is cached beside its
source tar (`<tar>.<sha>.gz`) so a large root filesystem is compressed once.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_layer(specs, workdir):
    """A tar of the given files, each `SRC:DEST:MODE`, parents included."""
    path = os.path.join(workdir, "files.tar")
    dirs = set()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for spec in specs:
            src, dest, mode = spec.split(":")
            dest = dest.strip("/")
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d in dirs:
                    continue
                dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            info = tarfile.TarInfo(dest)
            info.size = os.path.getsize(src)
            info.mode = int(mode, 8)
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return path


def compressed(tar_path, workdir):
    """(diff_id, gzip path) of a layer tar; the gzip is cached beside big tars."""
    diff_id = sha256_file(tar_path)
    cached = f"{tar_path}.{diff_id[:16]}.gz"
    if os.path.exists(cached):
        return diff_id, cached
    target = cached if os.path.getsize(tar_path) > (8 << 20) else os.path.join(workdir, diff_id + ".gz")
    tmp = target + ".tmp"
    with open(tar_path, "rb") as src, open(tmp, "wb") as raw:
        # mtime=0 and no file name: the same tar always compresses to the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                gz.write(chunk)
    os.replace(tmp, target)
    return diff_id, target


def blob_of(data):
    return hashlib.sha256(data).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="repository, e.g. lbpool.local/haproxy")
    ap.add_argument("--alias", action="append", default=[], help="another full name for the image")
    ap.add_argument("--layer", action="append", default=[], help="a layer tar (a root filesystem)")
    ap.add_argument("--file", action="append", default=[], help="SRC:DEST:MODE, into one extra layer")
    ap.add_argument("--entrypoint", default="[]", help="JSON list")
    ap.add_argument("--cmd", default="[]", help="JSON list")
    ap.add_argument("--user", default="")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--out", required=True, help="the archive to write")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as work:
        layers = list(args.layer)
        if args.file:
            layers.append(files_layer(args.file, work))
        done = [compressed(t, work) for t in layers]

        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": json.loads(args.entrypoint) or None,
                "Cmd": json.loads(args.cmd) or None,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
                "User": args.user,
                "WorkingDir": args.workdir,
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for d, _ in done]},
            "history": [{"created_by": "lbpool hack/images.sh"} for _ in done],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": "sha256:" + blob_of(config_bytes), "size": len(config_bytes)},
            "layers": [
                {"mediaType": MEDIA_LAYER, "digest": "sha256:" + sha256_file(gz), "size": os.path.getsize(gz)}
                for _, gz in done
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = blob_of(manifest_bytes)
        tag = manifest_digest[:12]
        names = [f"{args.name}:{tag}"] + args.alias
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": "sha256:" + manifest_digest,
                    "size": len(manifest_bytes),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
                for name in names
            ],
        }

        tmp = args.out + ".tmp"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(name, data):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_bytes("index.json", json.dumps(index, sort_keys=True).encode())
            add_bytes(f"blobs/sha256/{blob_of(config_bytes)}", config_bytes)
            add_bytes(f"blobs/sha256/{manifest_digest}", manifest_bytes)
            seen = set()
            for _, gz in done:
                digest = sha256_file(gz)
                if digest in seen:
                    continue
                seen.add(digest)
                tar.add(gz, arcname=f"blobs/sha256/{digest}", filter=lambda i: _plain(i))
        os.replace(tmp, args.out)
    print(names[0])


def _plain(info):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o644
    return info


if __name__ == "__main__":
    sys.exit(main())
