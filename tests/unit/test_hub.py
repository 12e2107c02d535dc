"""Publishing a family (codellama_hf.publish) through the real huggingface_hub client, against a loopback Hub.

`LoopbackHub` is an HTTP server on 127.0.0.1 written here. It speaks the endpoints the client calls (whoami,
repos/create, tree, preupload, the Git LFS batch API with basic transfers, NDJSON commits, collections, model
info, resolve for downloads), stores what it receives, checks hashes and the bearer token, and logs every
request. The client runs unmodified; HF_HUB_DISABLE_XET=1 makes it upload large files by Git LFS instead of Xet
(whose content-addressed store is not reproduced here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.helpers import ROOT
from tests.helpers.cards import tiny_family, write_results

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


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return tiny_family(tmp_path_factory)


@pytest.fixture(scope="module")
def results(family, tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"), family["tiny"], pass_at_1=0.25)


def _config(family, results, hub, tmp_path, **overrides):
    from codellama_hf.publish.staging import Member, PushConfig

    members = [
        Member("tiny", family["tiny"], [results]),
        Member("tiny-python", family["tiny-python"]),
        Member("tiny-instruct", family["tiny-instruct"]),
    ]
    return PushConfig(models=members, stage_dir=tmp_path / "staging", endpoint=hub.url, **overrides)


def test_push_family_then_rerun_uploads_nothing(online, family, results, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    from codellama_hf.evaluation.report import new_result, write_result
    from codellama_hf.publish.hub import push_family

    hub = online
    report = push_family(_config(family, results, hub, tmp_path))
    repos = ["tester/CodeLlama-tiny-hf", "tester/CodeLlama-tiny-Python-hf", "tester/CodeLlama-tiny-Instruct-hf"]
    assert sorted(report["repos"]) == sorted(repos)
    staged = tmp_path / "staging"
    for repo_id in repos:
        folder = staged / repo_id.split("/")[1]
        local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert hub.files(repo_id) == local  # every staged file arrived, byte for byte
        assert {"config.json", "model.safetensors", "tokenizer.json", "lineage.json", "README.md"} <= set(local)
    assert "evaluation/humaneval.json" in hub.files(repos[0])
    lfs_files = {
        p for p, f in hub.repos[repos[0]]["commits"][hub.repos[repos[0]]["branches"]["main"]].items() if f["lfs"]
    }
    assert "model.safetensors" in lfs_files  # large files went through the Git LFS batch API
    card = ModelCard(hub.files(repos[1])["README.md"].decode())
    assert card.data.base_model == repos[0]  # the Python model names its published parent
    [collection] = hub.collections.values()
    assert [i["id"] for i in collection["items"]] == repos and collection["title"] == "Code Llama (codellama_hf)"
    assert hub.authorization == {f"Bearer {TOKEN}"}

    # The same push again: only reads.
    before = len(hub.log)
    again = push_family(_config(family, results, hub, tmp_path))
    assert hub.writes(before) == []
    assert all(r["upload"] == [] and r["commit"] is None for r in again["repos"].values())
    assert again["collection"]["add"] == [] and not again["collection"]["create"]

    # A new HumanEval result changes one card and one results file: exactly those go up.
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "perplexity.json").write_bytes((results / "perplexity.json").read_bytes())
    humaneval = json.loads((results / "humaneval.json").read_text())
    write_result(
        newer,
        new_result(
            "humaneval",
            humaneval["model"],
            metrics={"pass@1": 0.5},
            config=humaneval["config"],
            num_problems=164,
            total_problems=164,
            num_samples=164,
        ),
    )
    before = len(hub.log)
    changed = push_family(_config(family, newer, hub, tmp_path))
    assert changed["repos"][repos[0]]["upload"] == ["README.md", "evaluation/humaneval.json"]
    assert changed["repos"][repos[0]]["commit"] == hub.repos[repos[0]]["branches"]["main"]
    assert all(changed["repos"][r]["upload"] == [] for r in repos[1:])
    commits = [w[1] for w in hub.writes(before) if w[1].endswith("/commit/main")]
    assert commits == [f"/api/models/{repos[0]}/commit/main"]
    assert json.loads(hub.files(repos[0])["evaluation/humaneval.json"])["metrics"]["pass@1"] == 0.5

    # A file the staged repository no longer has (e.g. a shard of an earlier upload) goes with delete_stale only.
    HfApi(endpoint=hub.url, token=TOKEN).upload_file(
        path_or_fileobj=b"old", path_in_repo="model-00002.safetensors", repo_id=repos[2]
    )
    kept = push_family(_config(family, newer, hub, tmp_path))
    assert kept["repos"][repos[2]]["delete"] == [] and "model-00002.safetensors" in hub.files(repos[2])
    cleaned = push_family(_config(family, newer, hub, tmp_path, delete_stale=True))
    assert cleaned["repos"][repos[2]]["delete"] == ["model-00002.safetensors"]
    assert "model-00002.safetensors" not in hub.files(repos[2]) and "README.md" in hub.files(repos[2])


def test_dry_run_stages_exactly_what_push_uploads(family, results, hub, tmp_path):
    """The real CLI in a subprocess: token from the login store, dry run first, then the push itself."""
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # the login store `hf auth login` writes
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    stage = tmp_path / "staging"
    args = [
        "push",
        "--model",
        f"tiny={family['tiny']}",
        "--results",
        f"tiny={results}",
        "--model",
        f"tiny-python={family['tiny-python']}",
        "--stage-dir",
        str(stage),
    ]
    dry = cli([*args, "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert hub.writes() == [] and hub.repos == {}
    plan = json.loads((stage / "push-plan.json").read_text())
    planned = {repo: sorted(r["upload"]) for repo, r in plan["repos"].items()}
    for repo, files in planned.items():
        folder = stage / repo.split("/")[1]
        assert files == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    push = cli(args, env)
    assert push.returncode == 0, push.stderr
    assert {repo: sorted(hub.files(repo)) for repo in planned} == planned
    for output in (dry.stdout, dry.stderr, push.stdout, push.stderr):
        assert TOKEN not in output
    assert not any(TOKEN.encode() in p.read_bytes() for p in stage.rglob("*") if p.is_file())

    # Staged repositories load with plain transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = stage / "CodeLlama-tiny-hf"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert json.loads((folder / "config.json").read_text())["rope_theta"] == 10_000.0


def test_push_without_token_is_a_clear_error(family, hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from codellama_hf.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_login" / "token"))  # empty login store
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    code = main(["push", "--model", f"tiny={family['tiny']}", "--stage-dir", str(tmp_path / "s")])
    assert code == 2
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err
    assert hub.log == []


def cli(args: list[str], env: dict):
    """`python -m codellama_hf ARGS` with this environment and no token but what `env` provides."""
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "codellama_hf", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        timeout=600,
    )


def test_wrong_token_and_push_config_errors(online, family, results, tmp_path, monkeypatch):
    from codellama_hf.publish.hub import push_family
    from codellama_hf.publish.staging import Member, PushConfig, read_push_config

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(RuntimeError, match=r"HTTP 401.*check HF_TOKEN or run `hf auth login`"):
        push_family(_config(family, results, online, tmp_path))
    with pytest.raises(ValueError, match=r"family slot\(s\) \['tiny'\] given twice"):
        PushConfig(models=[Member("tiny", family["tiny"]), Member("TINY", family["tiny-python"])])
    with pytest.raises(ValueError, match="unknown Code Llama variant 'java'"):
        Member("7b-java", family["tiny"])
    config = tmp_path / "family.yaml"
    config.write_text(f"namespace: me\nmodels:\n  tiny: {family['tiny']}\ncolection: typo\n")
    with pytest.raises(ValueError, match=r"family.yaml: unknown key\(s\) \['colection'\]"):
        read_push_config(config)
    config.write_text(f"namespace: me\nmodels:\n  tiny: {{path: {family['tiny']}, results: [{tmp_path / 'nope'}]}}\n")
    with pytest.raises(FileNotFoundError, match="results folder .*nope not found"):
        read_push_config(config)


def test_load_from_the_hf_cache_offline(online, family, tmp_path):
    """Push one model, download it into an empty HF cache, then load it by Hub id with HF_HUB_OFFLINE=1."""
    from huggingface_hub import snapshot_download

    from codellama_hf.load import HUB_PATTERNS
    from codellama_hf.publish.hub import push_family
    from codellama_hf.publish.staging import Member, PushConfig

    hub = online
    push_family(
        PushConfig(
            models=[Member("tiny", family["tiny"])], stage_dir=tmp_path / "s", endpoint=hub.url, collection=None
        )
    )
    cache = tmp_path / "hf_cache"
    snapshot_download("tester/CodeLlama-tiny-hf", cache_dir=cache, endpoint=hub.url, allow_patterns=HUB_PATTERNS)
    script = (
        "import json, sys\n"
        "from codellama_hf import load\n"
        "m = load('tester/CodeLlama-tiny-hf')\n"
        "out = {'repr': repr(m), 'infill': m.can_infill, 'completion': m.generate('def f(x):', max_new_tokens=3)}\n"
        "for name, kwargs in (('missing', {}), ('revision', {'revision': 'v9'})):\n"
        "    try:\n"
        "        load('tester/Other-hf' if name == 'missing' else 'tester/CodeLlama-tiny-hf', **kwargs)\n"
        "    except FileNotFoundError as err:\n"
        "        out[name] = str(err)\n"
        "print(json.dumps(out))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["repr"].startswith("CodeLlama(source='tester/CodeLlama-tiny-hf', variant=CodeLlama-tiny")
    assert out["infill"] is True and isinstance(out["completion"], str)
    assert "tester/Other-hf is not in the HF cache" in out["missing"] and "HF_HUB_OFFLINE=1" in out["missing"]
    assert "revision 'v9' of tester/CodeLlama-tiny-hf is not in the HF cache" in out["revision"]
    assert "cached: main" in out["revision"]


def test_online_errors_name_the_revision_and_the_repo(online, family, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from codellama_hf.load import load
    from codellama_hf.publish.hub import push_family
    from codellama_hf.publish.staging import Member, PushConfig

    hub = online
    push_family(
        PushConfig(
            models=[Member("tiny", family["tiny"])], stage_dir=tmp_path / "s", endpoint=hub.url, collection=None
        )
    )
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"tester/CodeLlama-tiny-hf has no revision 'nope'"):
        load("tester/CodeLlama-tiny-hf", revision="nope")
    with pytest.raises(FileNotFoundError, match=r"tester/Missing-hf: no such model"):
        load("tester/Missing-hf")
