"""A small in-memory Hugging Face Hub, served over real HTTP on 127.0.0.1, for testing the real client.

It implements the part of the Hub API that `huggingface_hub` (2.4) calls for create-repo, branches,
uploads (YAML validation, pre-upload, LFS batch + upload + verify, NDJSON commit) and downloads
(revision info, recursive tree listing, file resolve with LFS redirects). Request and response
shapes follow the client's source (`hf_api.py`, `_commit_api.py`, `lfs.py`, `file_download.py`).

Two listeners share one state: the API (the endpoint the client is pointed at) and a "CDN" on a
second port that takes LFS uploads and serves LFS blobs through signed URLs, like S3 behind the Hub.
A different origin matters: the client must not send its token there (`cdn_authorized_requests`).

Run the client against it with `HF_HUB_DISABLE_XET=1`: the Xet protocol is not served.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

DEFAULT_BRANCH = "main"
# The Hub decides LFS from .gitattributes patterns and size; these suffixes stand in for its defaults.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".parquet", ".arrow")
LFS_MIN_SIZE = 10 * 1024 * 1024
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"  # the client keys on this exact text
GITATTRIBUTES = b"".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode() for suffix in LFS_SUFFIXES)


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class StoredFile:
    """A file in a commit: inline content for regular files, a blob reference for LFS files."""

    size: int
    content: bytes | None = None  # regular file
    sha256: str | None = None  # LFS file

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def git_oid(self) -> str:
        # For LFS files git stores the pointer, so the blob oid is the pointer's.
        return git_blob_oid(lfs_pointer(self.sha256, self.size) if self.is_lfs else self.content)


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # commit oid -> tree
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    pull_requests: int = 0

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None

    def add_commit(self, tree: dict[str, StoredFile], parent: str | None, message: str) -> str:
        listing = sorted((path, f.git_oid) for path, f in tree.items())
        oid = hashlib.sha1(json.dumps([parent, message, listing, len(self.commits)]).encode()).hexdigest()
        self.commits[oid] = tree
        return oid


class ErrorResponse(Exception):
    """An error response, with the `X-Error-Code`/`X-Error-Message` headers the client maps to exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class LocalHub:
    """In-memory Hub state plus the two HTTP listeners. Use as a context manager or call start()/stop()."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = dict(tokens)  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # LFS storage, by sha256
        self.lfs_committed_paths: list[str] = []  # paths committed as LFS pointers, in order
        self.cdn_authorized_requests: list[str] = []  # CDN requests that carried a token (must stay empty)
        self._secret = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._api = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, _ApiRoutes))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, _CdnRoutes))
        self.endpoint = f"http://127.0.0.1:{self._api.server_address[1]}"
        self.cdn_endpoint = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> LocalHub:
        for server in (self._api, self._cdn):
            # A short poll interval: shutdown() waits up to one interval, and tests stop servers often.
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop the open connections: a client's kept-alive ones must not outlive us."""
        for server in (self._api, self._cdn):
            server.shutdown()
            server.server_close()
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):  # already shut down, or closed by the client meanwhile
                    connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def file_bytes(self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH) -> bytes:
        """The content of a file in the repo, for tests to inspect what was pushed."""
        repo = self.repos[repo_id]
        stored = repo.commits[repo.resolve(revision)][path]
        return self.blobs[stored.sha256] if stored.is_lfs else stored.content

    def sign(self, sha256: str) -> str:
        """The signature that authorizes a CDN URL for one blob, as a presigned S3 URL would."""
        return hmac.new(self._secret, sha256.encode(), "sha256").hexdigest()


# ---- request plumbing ------------------------------------------------------------------------


def _make_handler(hub: LocalHub, routes: type) -> type[BaseHTTPRequestHandler]:
    return type(routes.__name__, (routes,), {"hub": hub})


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 30  # an idle kept-alive connection must not hold a thread forever

    def setup(self) -> None:
        super().setup()
        # Responses go out as headers, then body: without TCP_NODELAY, Nagle's algorithm holds the
        # body back until the client's delayed ACK (~40 ms per request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.hub._connections_lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._connections_lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        # Split before unquoting: revisions arrive quoted with safe="" (refs%2Fpr%2F1 is one segment).
        self.segments = [unquote(part) for part in url.path.strip("/").split("/")]
        body = self._read_body()
        try:
            with self.hub._lock:
                response = self.route(method, body)
        except ErrorResponse as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            response = (error.status, headers, json.dumps({"error": error.message}).encode())
        self._send(method, *response)

    def route(self, method: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Streamed uploads (a file object as body) come chunked, without Content-Length.
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, method: str, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)


def _json(payload: object, status: int = 200, headers: dict[str, str] | None = None):
    return status, dict(headers or {}), json.dumps(payload).encode()


class _ApiRoutes(_Handler):
    """The Hub endpoint: /api/..., /{repo}.git/info/lfs/..., /{repo}/resolve/..."""

    def route(self, method: str, body: bytes):
        user = self._authenticate()
        seg = self.segments
        if method == "POST" and seg == ["api", "repos", "create"]:
            return self._create_repo(user, json.loads(body))
        if method == "POST" and seg == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if seg[0] == "api" and len(seg) >= 4:
            if seg[1] != "models":
                raise ErrorResponse(404, f"Only model repos are served here, not {seg[1]}.")
            repo_id = f"{seg[2]}/{seg[3]}"
            action, rest = (seg[4], seg[5:]) if len(seg) > 4 else ("info", [])
            if method == "GET" and action == "info":
                return self._repo_info(user, repo_id, DEFAULT_BRANCH)
            if method == "GET" and action == "revision" and len(rest) == 1:
                return self._repo_info(user, repo_id, rest[0])
            if method == "GET" and action == "tree" and rest:
                return self._tree(user, repo_id, rest[0], "/".join(rest[1:]))
            if method == "POST" and action == "branch" and len(rest) == 1:
                return self._create_branch(user, repo_id, rest[0], json.loads(body or b"{}"))
            if method == "POST" and action == "preupload" and len(rest) == 1:
                return self._preupload(user, repo_id, rest[0], json.loads(body))
            if method == "POST" and action == "commit" and len(rest) == 1:
                return self._commit(user, repo_id, rest[0], body)
        if len(seg) >= 5 and seg[1].endswith(".git") and seg[2:4] == ["info", "lfs"]:
            repo_id = f"{seg[0]}/{seg[1][: -len('.git')]}"
            if method == "POST" and seg[4:] == ["objects", "batch"]:
                return self._lfs_batch(user, repo_id, json.loads(body))
            if method == "POST" and seg[4:] == ["objects", "verify"]:
                return self._lfs_verify(user, repo_id, json.loads(body))
        if method in ("GET", "HEAD") and len(seg) >= 5 and seg[2] == "resolve":
            return self._resolve(user, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise ErrorResponse(404, f"No route for {method} {self.path}")

    # ---- auth ---------------------------------------------------------------------------------

    def _authenticate(self) -> str | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        token = header.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            raise ErrorResponse(401, INVALID_TOKEN_MESSAGE)
        return self.hub.tokens[token]

    def _readable(self, user: str | None, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        # Like the Hub, a private repo is indistinguishable from a missing one to outsiders.
        if repo is None or (repo.private and user != repo.owner):
            raise ErrorResponse(404, f"Repository {repo_id} not found", code="RepoNotFound")
        return repo

    def _writable(self, user: str | None, repo_id: str) -> Repo:
        if user is None:
            raise ErrorResponse(401, "You must be authenticated to write to a repository")
        repo = self._readable(user, repo_id)
        if repo.owner != user:
            raise ErrorResponse(403, f"You don't have write access to {repo_id}")
        return repo

    def _commit_oid(self, repo: Repo, revision: str) -> str:
        oid = repo.resolve(revision)
        if oid is None:
            raise ErrorResponse(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return oid

    # ---- repos and branches -------------------------------------------------------------------

    def _create_repo(self, user: str | None, payload: dict):
        if user is None:
            raise ErrorResponse(401, "You must be authenticated to create a repository")
        if payload.get("type", "model") != "model":
            raise ErrorResponse(400, "Only model repos are served here")
        namespace = payload.get("organization") or user
        if namespace != user:
            raise ErrorResponse(403, f"You don't have the rights to create a model under the namespace {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            return _json({"error": "You already created this model repo", "url": url}, status=409)
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id=repo_id, owner=user, private=private)
        # The Hub seeds every repo with a .gitattributes listing its LFS patterns.
        seed = {".gitattributes": StoredFile(size=len(GITATTRIBUTES), content=GITATTRIBUTES)}
        repo.refs[DEFAULT_BRANCH] = repo.add_commit(seed, None, "initial commit")
        self.hub.repos[repo_id] = repo
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _create_branch(self, user: str | None, repo_id: str, branch: str, payload: dict):
        repo = self._writable(user, repo_id)
        if branch in repo.refs:
            raise ErrorResponse(409, f"Reference already exists: refs/heads/{branch}")
        repo.refs[branch] = self._commit_oid(repo, payload.get("startingPoint") or DEFAULT_BRANCH)
        return _json({})

    def _repo_info(self, user: str | None, repo_id: str, revision: str):
        repo = self._readable(user, repo_id)
        oid = self._commit_oid(repo, revision)
        siblings = [{"rfilename": path} for path in sorted(repo.commits[oid])]
        return _json({"id": repo_id, "author": repo.owner, "sha": oid, "private": repo.private, "siblings": siblings})

    def _tree(self, user: str | None, repo_id: str, revision: str, prefix: str):
        repo = self._readable(user, repo_id)
        tree = repo.commits[self._commit_oid(repo, revision)]
        recursive = self.query.get("recursive", "false").lower() == "true"
        base = f"{prefix}/" if prefix else ""
        entries, folders = [], set()
        for path in sorted(tree):
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            # Every folder on the way is listed; without `recursive` only the first level is.
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(base + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(_tree_file(path, tree[path]))
        entries += [{"type": "directory", "oid": git_blob_oid(p.encode()), "size": 0, "path": p} for p in folders]
        return _json(sorted(entries, key=lambda entry: entry["path"]))

    # ---- upload -------------------------------------------------------------------------------

    def _validate_yaml(self, payload: dict):
        content = payload.get("content", "")
        if content.startswith("---"):
            front_matter = content.split("---", 2)[1]
            try:
                yaml.safe_load(front_matter)
            except yaml.YAMLError as error:
                return _json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, status=400)
        return _json({"errors": [], "warnings": []})

    def _preupload(self, user: str | None, repo_id: str, revision: str, payload: dict):
        repo = self._writable(user, repo_id)
        tree = repo.commits[self._commit_oid(repo, revision)]
        files = []
        for item in payload["files"]:
            path = item["path"]
            lfs = path.endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE
            existing = tree.get(path)
            # The client skips files whose oid it already has: sha256 for LFS, git blob oid otherwise.
            oid = None if existing is None else (existing.sha256 if existing.is_lfs else existing.git_oid)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return _json({"files": files})

    def _lfs_batch(self, user: str | None, repo_id: str, payload: dict):
        self._writable(user, repo_id)
        if payload.get("operation") != "upload":
            raise ErrorResponse(400, "Only the upload operation is served")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.blobs:  # no "actions" means: already stored, nothing to send
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.cdn_endpoint}/upload/{oid}?signature={self.hub.sign(oid)}"},
                    "verify": {"href": f"{self.hub.endpoint}/{repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        return _json(
            {"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"}
        )

    def _lfs_verify(self, user: str | None, repo_id: str, payload: dict):
        self._writable(user, repo_id)
        blob = self.hub.blobs.get(payload["oid"])
        if blob is None or len(blob) != payload["size"]:
            raise ErrorResponse(422, f"LFS object {payload['oid']} is missing or has the wrong size")
        return _json({})

    def _commit(self, user: str | None, repo_id: str, revision: str, body: bytes):
        repo = self._writable(user, repo_id)
        base_oid = self._commit_oid(repo, revision)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise ErrorResponse(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, base_oid):
            raise ErrorResponse(412, "A commit has happened since the parent commit you gave")
        tree = dict(repo.commits[base_oid])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                content = base64.b64decode(value["content"])
                tree[value["path"]] = StoredFile(size=len(content), content=content)
            elif line["key"] == "lfsFile":
                blob = self.hub.blobs.get(value["oid"])
                if blob is None:
                    raise ErrorResponse(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                tree[value["path"]] = StoredFile(size=len(blob), sha256=value["oid"])
                self.hub.lfs_committed_paths.append(value["path"])
            elif line["key"] == "deletedFile":
                tree.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                tree = {path: f for path, f in tree.items() if not path.startswith(folder)}
            else:
                raise ErrorResponse(400, f"Unknown commit operation {line['key']}")
        oid = repo.add_commit(tree, base_oid, header["summary"])
        pr_url = None
        if self.query.get("create_pr") == "1":
            repo.pull_requests += 1
            repo.refs[f"refs/pr/{repo.pull_requests}"] = oid
            pr_url = f"{self.hub.endpoint}/{repo_id}/discussions/{repo.pull_requests}"
        else:
            repo.refs[revision] = oid
        return _json(
            {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}
        )

    # ---- download -----------------------------------------------------------------------------

    def _resolve(self, user: str | None, repo_id: str, revision: str, path: str):
        repo = self._readable(user, repo_id)
        oid = self._commit_oid(repo, revision)
        stored = repo.commits[oid].get(path)
        if stored is None:
            raise ErrorResponse(404, f"Entry {path} not found", code="EntryNotFound", commit=oid)
        headers = {"X-Repo-Commit": oid, "ETag": f'"{stored.git_oid}"', "Content-Type": "application/octet-stream"}
        if not stored.is_lfs:
            return 200, headers, stored.content
        # LFS content lives elsewhere: redirect to a signed CDN URL, describing the target in X-Linked-*.
        location = f"{self.hub.cdn_endpoint}/blobs/{stored.sha256}?signature={self.hub.sign(stored.sha256)}"
        headers.update({"Location": location, "X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        return 302, headers, b""


def _tree_file(path: str, stored: StoredFile) -> dict:
    entry = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
    if stored.is_lfs:
        entry["lfs"] = {
            "oid": stored.sha256,
            "size": stored.size,
            "pointerSize": len(lfs_pointer(stored.sha256, stored.size)),
        }
    return entry


class _CdnRoutes(_Handler):
    """Blob storage: PUT /upload/{sha256} and GET /blobs/{sha256}, both authorized by a URL signature only."""

    def route(self, method: str, body: bytes):
        if "Authorization" in self.headers:
            self.hub.cdn_authorized_requests.append(f"{method} {self.path}")
        if len(self.segments) != 2 or not hmac.compare_digest(
            self.query.get("signature", ""), self.hub.sign(self.segments[1])
        ):
            raise ErrorResponse(403, "Missing or wrong URL signature")
        kind, sha256 = self.segments
        if method == "PUT" and kind == "upload":
            if hashlib.sha256(body).hexdigest() != sha256:
                raise ErrorResponse(400, "Uploaded content does not match its sha256")
            self.hub.blobs[sha256] = body
            return 200, {"ETag": f'"{sha256}"'}, b""
        if method in ("GET", "HEAD") and kind == "blobs" and sha256 in self.hub.blobs:
            return 200, {"Content-Type": "application/octet-stream"}, self.hub.blobs[sha256]
        raise ErrorResponse(404, f"No blob at {quote(self.path)}")
