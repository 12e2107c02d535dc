"""The loopback Hub of the publishing tests (unit and integration): an HTTP server on 127.0.0.1 that speaks the
endpoints huggingface_hub calls (tests/unit/test_hub.py says which). Fixtures: `hub` (a server per test) and
`online` (this process talks to it)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".png", ".pt", ".pth")


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


class LoopbackHub:
    """A minimal Hugging Face Hub on 127.0.0.1 (see the module docstring)."""

    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[str, dict] = {}  # repo id -> {"private", "branches": {name: sha}, "commits": {sha: files}}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.collections: dict[str, dict] = {}
        self.log: list[tuple[str, str, int]] = []
        self.authorization: set[str] = set()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def writes(self, since: int = 0) -> list[tuple[str, str, int]]:
        """Requests that change or would change state (validate-yaml only reads)."""
        return [r for r in self.log[since:] if r[0] not in ("GET", "HEAD") and r[1] != "/api/validate-yaml"]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        tree = repo["commits"][repo["branches"][revision]]
        return {path: self.lfs[f["lfs"]] if f["lfs"] else f["content"] for path, f in tree.items()}

    # -- request handling ------------------------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _dispatch(self, method):
                url = urlsplit(self.path)
                self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                if auth:
                    hub.authorization.add(auth)
                self.authorized = auth == f"Bearer {hub.token}"
                with hub.lock:
                    status, headers, payload = hub.route(method, unquote(url.path), self)
                    hub.log.append((method, unquote(url.path), status))
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                if "Content-Type" not in headers:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            def do_GET(self):
                self._dispatch("GET")

            def do_HEAD(self):
                self._dispatch("HEAD")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

        return Handler

    @staticmethod
    def _error(status: int, code: str | None, message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return status, headers, {"error": message}

    def _repo(self, repo_id: str, request, revision: str | None = None):
        """(repo, commit sha) or an error response."""
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not request.authorized):
            return None, self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        revision = revision or "main"
        sha = repo["branches"].get(revision) or (revision if revision in repo["commits"] else None)
        if sha is None:
            return None, self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return (repo, sha), None

    def route(self, method: str, path: str, request):
        writes = method in ("POST", "PUT") and path != "/api/validate-yaml"
        if writes and not path.startswith("/lfs/") and not request.authorized:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if path == "/api/whoami-v2":
            if not request.authorized:
                return self._error(401, None, "Invalid credentials in Authorization header")
            return (
                200,
                {},
                {
                    "type": "user",
                    "name": self.user,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                },
            )
        if path == "/api/validate-yaml":
            return 200, {}, {"errors": [], "warnings": []}
        if path == "/api/repos/create":
            spec = json.loads(request.body)
            repo_id = f"{spec.get('organization') or self.user}/{spec['name']}"
            if repo_id in self.repos:
                return 409, {}, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            empty = hashlib.sha1(repo_id.encode()).hexdigest()
            private = spec.get("visibility") == "private" or bool(spec.get("private"))
            self.repos[repo_id] = {"private": private, "branches": {"main": empty}, "commits": {empty: {}}}
            return 200, {}, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if path.startswith("/api/collections"):
            return self._collections(method, path, request)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if match:
            found, error = self._repo(match[1], request, match[2])
            if error:
                return error
            (repo, sha) = found
            return (
                200,
                {},
                {
                    "id": match[1],
                    "sha": sha,
                    "private": repo["private"],
                    "siblings": [{"rfilename": p} for p in sorted(repo["commits"][sha])],
                },
            )
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if match:
            return self._tree(match[1], match[2], match[3] or "", request)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if match:
            return self._preupload(match[1], match[2], request)
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if match:
            return self._lfs_batch(json.loads(request.body))
        match = re.fullmatch(r"/lfs/(upload|verify)/([0-9a-f]{64})", path)
        if match:
            return self._lfs_object(match[1], match[2], request)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if match:
            return self._commit(match[1], match[2], request)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            return self._resolve(match[1], match[2], match[3], request)
        return self._error(404, None, f"no route for {method} {path}")

    def _tree(self, repo_id, revision, prefix, request):
        found, error = self._repo(repo_id, request, revision)
        if error:
            return error
        repo, sha = found
        entries, folders = [], set()
        for path, f in sorted(repo["commits"][sha].items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry = {"type": "file", "oid": f["blob"], "size": f["size"], "path": path}
            if f["lfs"]:
                entry["lfs"] = {"oid": f["lfs"], "size": f["size"], "pointerSize": len(_pointer(f["lfs"], f["size"]))}
            entries.append(entry)
        entries += [{"type": "directory", "oid": _git_blob(d.encode()), "size": 0, "path": d} for d in sorted(folders)]
        return 200, {}, entries

    def _preupload(self, repo_id, revision, request):
        found, error = self._repo(repo_id, request, revision)
        if error:
            return error
        repo, sha = found
        out = []
        for f in json.loads(request.body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000 or b"\0" in sample
            remote = repo["commits"][sha].get(f["path"])
            oid = None if remote is None else remote["lfs"] if remote["lfs"] else remote["blob"]
            out.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return 200, {}, {"files": out}

    def _lfs_batch(self, spec):
        objects = []
        for obj in spec["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:  # already stored objects get no actions: nothing to send
                upload, verify = (f"{self.url}/lfs/{action}/{obj['oid']}" for action in ("upload", "verify"))
                entry["actions"] = {"upload": {"href": upload, "header": {}}, "verify": {"href": verify}}
            objects.append(entry)
        return 200, {}, {"transfer": "basic", "objects": objects}

    def _lfs_object(self, action, oid, request):
        if action == "upload":
            if hashlib.sha256(request.body).hexdigest() != oid:
                return self._error(400, None, "content does not match its sha256")
            self.lfs[oid] = request.body
            return 200, {}, {}
        if not request.authorized:
            return self._error(401, None, "Invalid credentials in Authorization header")
        return (200, {}, {}) if oid in self.lfs else self._error(404, None, "object not uploaded")

    def _commit(self, repo_id, revision, request):
        found, error = self._repo(repo_id, request, revision)
        if error:
            return error
        repo, sha = found
        files = dict(repo["commits"][sha])
        for line in request.body.splitlines():
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "file":
                content = base64.b64decode(value["content"])
                files[value["path"]] = {
                    "size": len(content),
                    "lfs": None,
                    "blob": _git_blob(content),
                    "content": content,
                }
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return self._error(422, None, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                size = len(self.lfs[value["oid"]])
                files[value["path"]] = {
                    "size": size,
                    "lfs": value["oid"],
                    "blob": _git_blob(_pointer(value["oid"], size)),
                }
            elif key == "deletedFile":
                files.pop(value["path"], None)
        new = hashlib.sha1(json.dumps([sha, sorted((p, f["blob"]) for p, f in files.items())]).encode()).hexdigest()
        repo["commits"][new] = files
        repo["branches"][unquote(revision)] = new
        return 200, {}, {"commitUrl": f"{self.url}/{repo_id}/commit/{new}", "commitOid": new, "pullRequestUrl": None}

    def _resolve(self, repo_id, revision, path, request):
        found, error = self._repo(repo_id, request, revision)
        if error:
            return error
        repo, sha = found
        f = repo["commits"][sha].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        content = self.lfs[f["lfs"]] if f["lfs"] else f["content"]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{f["blob"]}"',
            "Content-Length": str(len(content)),
            "Content-Type": "application/octet-stream",
        }
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{f["lfs"]}"', "X-Linked-Size": str(len(content))})
        return 200, headers, content

    def _collection_json(self, slug, *, with_position=True):
        c = self.collections[slug]
        data = {
            "slug": slug,
            "title": c["title"],
            "owner": {"name": c["namespace"]},
            "items": c["items"],
            "lastUpdated": "2026-01-01T00:00:00.000Z",
            "private": c["private"],
            "theme": "blue",
            "upvotes": 0,
            "description": c["description"],
        }
        return {**data, "position": 0} if with_position else data

    def _collections(self, method, path, request):
        if path == "/api/collections" and method == "GET":
            owner = request.query.get("owner")
            return (
                200,
                {},
                [
                    self._collection_json(s, with_position=False)
                    for s, c in self.collections.items()
                    if owner in (None, c["namespace"])
                ],
            )
        if path == "/api/collections" and method == "POST":
            spec = json.loads(request.body)
            for slug, c in self.collections.items():
                if (c["namespace"], c["title"]) == (spec["namespace"], spec["title"]):
                    return 409, {}, {"error": "collection exists", "slug": slug}
            slug = (
                f"{spec['namespace']}/{re.sub(r'[^a-z0-9]+', '-', spec['title'].lower()).strip('-')}-"
                + secrets.token_hex(12)
            )
            self.collections[slug] = {
                "title": spec["title"],
                "namespace": spec["namespace"],
                "items": [],
                "private": spec.get("private", False),
                "description": spec.get("description"),
            }
            return 200, {}, self._collection_json(slug)
        match = re.fullmatch(r"/api/collections/([^/]+/[^/]+?)(/items)?", path)
        if match is None or match[1] not in self.collections:
            return self._error(404, None, "Collection not found")
        slug, c = match[1], self.collections[match[1]]
        if match[2] and method == "POST":
            item = json.loads(request.body)
            if any(i["id"] == item["item"]["id"] for i in c["items"]):
                return 409, {}, {"error": "item already in the collection"}
            c["items"].append(
                {
                    "_id": secrets.token_hex(12),
                    "id": item["item"]["id"],
                    "type": item["item"]["type"],
                    "position": len(c["items"]),
                    "note": {"text": item.get("note")},
                }
            )
        return 200, {}, self._collection_json(slug)


# ---------------------------------------------------------------------------------------------------------------


TOKEN = "hf_" + "loopback0" * 4


@pytest.fixture
def hub():
    server = LoopbackHub(TOKEN)
    yield server
    server.close()


@pytest.fixture
def online(monkeypatch, hub):
    """This process talks to the loopback Hub: offline mode off, Git LFS instead of Xet, the token in HF_TOKEN."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub
